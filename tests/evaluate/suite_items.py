"""Multiple-choice items the suite and forgetting tests share: every answer spelling (index, letter, text)."""

ROWS = [
    {"question": "Amy and Ben want to book a table. Who books?", "choices": ["Amy", "Ben", "Carla", "Dev"], "answer": 0, "subject": "people"},
    {"question": "Can we fix the printer today?", "choices": ["yes", "no, not today"], "answer": "B", "subject": "plans"},
    {"question": "What do they plan?", "choices": ["a trip", "a present", "a flat"], "answer": "a trip", "subject": "plans"},
    {"question": "Who moves the meeting?", "choices": ["Elena", "Farid", "Amy"], "answer": 2, "subject": "people", "id": "q4"},
    {"question": "Dev and Carla: can we buy a present?", "choices": ["Dev", "Carla", "both of them"], "answer": 1, "subject": "people"},
    {"question": "Where do they meet?", "choices": ["at the cafe", "at home", "in the park", "at work"], "answer": 3, "subject": "plans"},
]
SHOTS = [
    {"question": "Farid and Amy: can we plan a trip?", "choices": ["Farid", "Amy"], "answer": 0},
    {"question": "Ben wants to find a flat. Who?", "choices": ["Carla", "Ben", "Dev"], "answer": 1},
]
