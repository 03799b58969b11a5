"""Fixed facts the about page states: the original study's numbers and the published
patient-split results, each with where it comes from."""

from __future__ import annotations

# The original study (this project's source plan): patch-level test scores after a random
# split of patches, so patches of one patient sit in both training and test.
ORIGINAL_STUDY = (
    # name, accuracy, precision, recall, F1
    ("VGG16 (transfer learning)", 0.8673, 0.8892, 0.8343, 0.8609),
    ("ResNet50 (transfer learning)", 0.8848, 0.8569, 0.9196, 0.8871),
    ("Keras Tuner CNN", 0.8760, 0.8784, 0.8684, 0.8734),
)
ORIGINAL_COLUMNS = ("accuracy", "precision", "recall", "f1")

# Published results on the same patches with patients kept apart (split by patient).
PATIENT_SPLIT_PAPERS = (
    ("Cruz-Roa et al. 2014, SPIE Medical Imaging 9041", "F1 0.7180, balanced accuracy 0.8423"),
    ("Janowczyk & Madabhushi 2016, J Pathol Inform 7:29", "F1 0.7648, balanced accuracy 0.8468"),
)
