"""A trained model at work: loading a checkpoint with its card, inference backends (the fast
path, TorchScript, ONNX Runtime, OpenVINO), prediction on new images, calibrated thresholds,
overlays and export. Stands on model/, datamodules/ and common/; never imports engine/ (training
may call calibration from here, the arrow runs one way)."""
