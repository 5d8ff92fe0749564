"""Export a chain to run elsewhere (ONNX: :func:`~finechain.export.onnx.export_onnx`) and compress it."""
