"""Face-recognition protocols: verification (ROC, TAR@FAR, EER, AUC) and open-set identification."""
