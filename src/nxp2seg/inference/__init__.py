"""Prediction on new exams: inputs, geometry, the predictor, writers and DICOM I/O."""
