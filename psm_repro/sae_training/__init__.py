"""The embedded model's SAE from scratch: the corpus (`build-corpus`), training (`train-sae`) and held-out
evaluation."""
