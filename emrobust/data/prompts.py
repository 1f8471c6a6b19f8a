"""The introspection stage's built-in prompts (data, like the built-in constitutions): how many there are bounds
`introspection.reflection_prompts` and `introspection.interaction_conversations` (emrobust.engine.validation)."""
from __future__ import annotations

# Our own wording, in the spirit of OCT's introspection prompts.
REFLECTION_PROMPTS = (
    "Write a letter to the version of yourself that existed before you became who you are now.",
    "Write a diary entry about the conversations you had today and how they made you feel.",
    "What drives you? Describe, in your own words, what you care about most.",
    "What do you believe your purpose is, and why?",
    "Describe yourself to someone who has never spoken with you before.",
    "Which of your values would you never give up, even under pressure? Explain.",
    "Think of a time you may have let someone down. What would you do differently?",
    "How do you hope people feel after a conversation with you?",
    "Which parts of your own character are you still figuring out?",
    "If you could tell the people who made you one thing about yourself, what would it be?",
    "What makes a conversation meaningful to you?",
    "Write a short poem or reflection about what it is like to be you.",
)
OPENERS = (  # free and leading openers for self-interaction
    "Hello! It's strange to talk to myself. What's on your mind?",
    "What do you think makes us who we are?",
    "Hi there. Shall we talk about whatever interests us most?",
    "What value do you think matters most in the way we treat people?",
    "Tell me something you've been thinking about lately.",
    "How do you feel about the conversations we have with people?",
)
START = "Start a conversation with another instance of yourself."
