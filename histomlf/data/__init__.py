"""The IDC data layer: scanning, manifests, patient-level splits, the tf.data pipeline."""
