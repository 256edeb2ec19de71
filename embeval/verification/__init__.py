"""Verification and identification protocols (face recognition, biometrics)."""
