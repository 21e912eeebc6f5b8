"""An OpenAI-compatible gateway in front of a model server: authentication, limits, metrics and a chat page."""
