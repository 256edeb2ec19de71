"""Face-recognition protocols: verification (all pairs or listed pairs) and open-set identification."""
