"""What a request needs beyond the ranker itself: the blend's features and MMR diversity."""
