"""The HTTP/JSON gateway over the ranker's and catalog's gRPC contracts, and the relevance-judgement page."""
