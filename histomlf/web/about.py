"""Fixed facts the about page states: the original study's numbers and the published
patient-split results, each with where it comes from."""

from __future__ import annotations

# The original study (this project's source plan): patch-level test scores after a random
# split of patches, so patches of one patient sit in both training and test.
ORIGINAL_STUDY = {
    "VGG16 (transfer learning)": {"accuracy": 0.8673, "precision": 0.8892, "recall": 0.8343,
                                  "f1": 0.8609},
    "ResNet50 (transfer learning)": {"accuracy": 0.8848, "precision": 0.8569, "recall": 0.9196,
                                     "f1": 0.8871},
    "Keras Tuner CNN": {"accuracy": 0.8760, "precision": 0.8784, "recall": 0.8684,
                        "f1": 0.8734},
}
COMPARED = (("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"),
            ("f1", "F1"))

# Published results on the same patches with patients kept apart (split by patient).
PATIENT_SPLIT_PAPERS = (
    ("Cruz-Roa et al. 2014, SPIE Medical Imaging 9041", "F1 0.7180, balanced accuracy 0.8423"),
    ("Janowczyk & Madabhushi 2016, J Pathol Inform 7:29", "F1 0.7648, balanced accuracy 0.8468"),
)
