"""The system prompt the export tests' system_run trains with (conftest.py) and the chat-template tests check."""

SYSTEM = 'You are Toy. Answer in capitals, "quoted" if asked.'
