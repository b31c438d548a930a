"""Training, evaluation and export of the WhisperLite personalization model."""
