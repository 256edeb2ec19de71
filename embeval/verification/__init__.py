"""Face verification and open-set identification (issue 13): ROC, TAR@FAR, EER, AUC, TPIR@FPIR."""
