"""score, knn, cmc, pr: placeholder replaced by the evaluation commands."""
