"""Verification and identification protocols (face recognition and biometrics)."""
