"""The SiteNet prediction service (BentoML + ONNX Runtime); see ``serving/service.py``. No torch."""
