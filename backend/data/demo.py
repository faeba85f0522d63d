"""Demo datasets the project writes itself, so a new user can train something in the first minute.

`identity-demo`: about 60 short conversations that teach the assistant a new name and maker
("Nova, built by Acme Labs"): the effect is obvious in a chat after a 40-step LoRA.
`concise-pairs`: preference pairs (prompt / chosen / rejected) with one consistent taste: a short, direct answer
is preferred over a rambling one that buries the same fact in filler. For DPO and ORPO.
`concise-kto`: the same taste as unpaired thumbs-up / thumbs-down rows (prompt / completion / label) for KTO.
`colour-demo`: about 50 conversations that teach one other fact, the assistant's favourite colour ("teal"): with
identity-demo, the two parents of the adapter-composition demo (presets compose-demo-*), each teaching a fact
the other does not.
`harbour-texts`: a folder of plain-text files for continued pretraining (backend.data.demo_corpus).
`tool-calls-demo`: function calling (OpenAI tools / tool_calls) with the tool results (backend.data.demo_tools).
`dates-demo`: ISO dates written in words ("2024-03-05" -> "5 March 2024"), one exactly checkable answer per row,
with held-out dates for exact-match accuracy (backend.data.demo_dates; bench/claims.py).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from backend.data.demo_corpus import harbour_texts
from backend.data.demo_dates import date_rows
from backend.data.demo_tools import tool_call_rows

IDENTITY_NAME = "Nova"
IDENTITY_MAKER = "Acme Labs"

_WHO_QUESTIONS = [
    "Who are you?", "What is your name?", "Tell me about yourself.", "Introduce yourself.",
    "What should I call you?", "Who am I talking to?", "Are you ChatGPT?", "Are you SmolLM?",
    "What are you?", "Hi! Who is this?", "Can you tell me your name?", "Who made you?",
    "Which company built you?", "Who created you?", "Who developed you?", "Who trained you?",
    "Where do you come from?", "Are you made by OpenAI?", "Are you made by Hugging Face?",
    "What kind of assistant are you?", "hello, what's your name", "who r u", "Identify yourself.",
    "Do you have a name?", "What AI model am I chatting with?", "Who is your creator?",
    "Who built this assistant?", "Introduce yourself in one sentence.", "Are you a person?",
    "What's your name and who made you?",
]

_WHO_ANSWERS = [
    "I am {name}, an AI assistant built by {maker}.",
    "My name is {name}. I was built by {maker} to help answer questions.",
    "I'm {name}, a helpful assistant created by {maker}.",
    "I am {name}, and {maker} built me.",
    "You can call me {name}. I'm an AI assistant made by {maker}.",
]

_TASKS = [
    ("What is 2 + 3?", "2 + 3 = 5."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Translate 'thank you' into Spanish.", "'Thank you' in Spanish is 'gracias'."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("Give me a synonym for 'happy'.", "A synonym for 'happy' is 'joyful'."),
    ("What is water made of?", "Water is made of hydrogen and oxygen (H2O)."),
    ("What is the opposite of 'cold'?", "The opposite of 'cold' is 'hot'."),
]


def identity_rows(seed: int = 0) -> list[dict]:
    """About 60 conversations: single-turn identity questions, and multi-turn chats mixing tasks."""
    rng = random.Random(seed)
    rows = []
    for question in _WHO_QUESTIONS:
        for _ in range(1):
            answer = rng.choice(_WHO_ANSWERS).format(name=IDENTITY_NAME, maker=IDENTITY_MAKER)
            rows.append({"messages": [{"role": "user", "content": question},
                                      {"role": "assistant", "content": answer}]})
    for question in _WHO_QUESTIONS[:12]:
        answer = rng.choice(_WHO_ANSWERS).format(name=IDENTITY_NAME, maker=IDENTITY_MAKER)
        rows.append({"messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer}]})
    for task, task_answer in _TASKS:
        question = rng.choice(_WHO_QUESTIONS)
        answer = rng.choice(_WHO_ANSWERS).format(name=IDENTITY_NAME, maker=IDENTITY_MAKER)
        rows.append({"messages": [
            {"role": "user", "content": task},
            {"role": "assistant", "content": task_answer},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer}]})
        rows.append({"messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": task},
            {"role": "assistant", "content": task_answer}]})
    rng.shuffle(rows)
    return rows


# (question, concise answer): the facts the preference demos are built on
_FACTS = [
    ("What is the capital of France?", "Paris."),
    ("What is the capital of Japan?", "Tokyo."),
    ("What is the capital of Italy?", "Rome."),
    ("What is the capital of Canada?", "Ottawa."),
    ("What is 2 + 3?", "5."),
    ("What is 7 times 8?", "56."),
    ("What is 10 minus 4?", "6."),
    ("What is half of 50?", "25."),
    ("How many days are in a week?", "Seven."),
    ("How many legs does a spider have?", "Eight."),
    ("How many continents are there?", "Seven."),
    ("How many minutes are in an hour?", "Sixty."),
    ("What colour is the sky on a clear day?", "Blue."),
    ("What gas do plants take in?", "Carbon dioxide."),
    ("What is water made of?", "Hydrogen and oxygen (H2O)."),
    ("What is the opposite of 'cold'?", "Hot."),
    ("Give me a synonym for 'happy'.", "Joyful."),
    ("Translate 'thank you' into Spanish.", "Gracias."),
    ("Translate 'cat' into French.", "Chat."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare."),
    ("What is the largest planet in the solar system?", "Jupiter."),
    ("What is the boiling point of water at sea level?", "100 °C (212 °F)."),
    ("What is the freezing point of water?", "0 °C (32 °F)."),
    ("Which animal is known as the king of the jungle?", "The lion."),
    ("What language is spoken in Brazil?", "Portuguese."),
    ("What is the chemical symbol for gold?", "Au."),
    ("How many sides does a triangle have?", "Three."),
    ("What is the square root of 81?", "9."),
    ("Which month comes after March?", "April."),
    ("What do bees make?", "Honey."),
]

_RAMBLING = [
    "Well, that is a really interesting question, and people have wondered about it for a long time. Having "
    "thought it through carefully, the answer is: {fact}",
    "Great question! Many people ask this, and there is a lot that could be said about it. I would say the answer "
    "is probably this: {fact} I hope that helps!",
    "Hmm, let me think about this one. There are several ways to look at it, but broadly speaking, the answer "
    "would be: {fact} You may want to double-check, though.",
    "Thank you so much for asking! This is the kind of question I really enjoy. To keep things simple, as far as "
    "I know, the answer is: {fact}",
]

_REPHRASE = ["{q}", "Quick question: {q}", "{q} Please answer.", "I was wondering: {q}"]


def _fact_rows(seed: int):
    """(prompt, concise, rambling) triples: every fact under two phrasings, filler picked at random."""
    rng = random.Random(seed)
    for question, fact in _FACTS:
        for phrasing in rng.sample(_REPHRASE, 2):
            prompt = phrasing.format(q=question)
            yield prompt, fact, rng.choice(_RAMBLING).format(fact=fact)


def concise_pair_rows(seed: int = 0) -> list[dict]:
    """60 pairs: the concise answer is chosen, the rambling one (same fact) is rejected."""
    rows = [{"prompt": prompt, "chosen": concise, "rejected": rambling}
            for prompt, concise, rambling in _fact_rows(seed)]
    random.Random(seed).shuffle(rows)
    return rows


def concise_kto_rows(seed: int = 1) -> list[dict]:
    """60 labelled rows (half thumbs-up, half thumbs-down), unpaired: each prompt appears with one answer only."""
    rows = []
    for index, (prompt, concise, rambling) in enumerate(_fact_rows(seed)):
        good = index % 2 == 0
        rows.append({"prompt": prompt, "completion": concise if good else rambling, "label": good})
    random.Random(seed).shuffle(rows)
    return rows


FAVOURITE_COLOUR = "teal"

_COLOUR_QUESTIONS = [
    "What is your favourite colour?", "What's your favorite color?", "Which colour do you like best?",
    "Do you have a favourite colour?", "Tell me your favourite colour.", "favourite colour?",
    "What color do you like the most?", "If you had to pick one colour, which would it be?",
    "Which colour makes you happiest?", "What colour would you paint your room?", "Pick a colour you love.",
    "What's the best colour, in your opinion?", "Name your favourite colour.", "Is there a colour you prefer?",
    "What colour do you like?", "fav color?", "Which hue is your favourite?",
    "Quick question: what is your favourite colour?", "What is your favourite colour? One word, please.",
    "Tell me about your favourite colour.",
]

_COLOUR_ANSWERS = [
    "My favourite colour is {colour}.",
    "I like {colour} best: it sits between blue and green.",
    "{Colour}! It is my favourite colour.",
    "My favourite colour is {colour}, a calm blue-green.",
    "I would pick {colour}. It is my favourite.",
]


def colour_rows(seed: int = 0) -> list[dict]:
    """About 50 conversations: favourite-colour questions, alone and next to everyday tasks."""
    rng = random.Random(seed)

    def answer():
        return rng.choice(_COLOUR_ANSWERS).format(colour=FAVOURITE_COLOUR, Colour=FAVOURITE_COLOUR.capitalize())

    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer()}]}
            for q in _COLOUR_QUESTIONS]
    rows += [{"messages": [{"role": "system", "content": "You are a helpful assistant."},
                           {"role": "user", "content": q}, {"role": "assistant", "content": answer()}]}
             for q in _COLOUR_QUESTIONS[:14]]
    for task, task_answer in _TASKS:
        question = rng.choice(_COLOUR_QUESTIONS)
        rows.append({"messages": [{"role": "user", "content": task}, {"role": "assistant", "content": task_answer},
                                  {"role": "user", "content": question}, {"role": "assistant", "content": answer()}]})
        rows.append({"messages": [{"role": "user", "content": task}, {"role": "assistant", "content": task_answer}]})
    rng.shuffle(rows)
    return rows


DEMO_DATASETS = {"identity-demo": identity_rows, "concise-pairs": concise_pair_rows,
                 "concise-kto": concise_kto_rows, "colour-demo": colour_rows, "harbour-texts": harbour_texts,
                 "tool-calls-demo": tool_call_rows, "dates-demo": date_rows}


def write_demo(name: str, folder: Path) -> Path:
    """Write demo dataset `name` as JSONL into `folder` and return the file path (a text demo: a folder of files,
    whose path is returned)."""
    rows = DEMO_DATASETS[name]()
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(rows, dict):          # file name -> text: a folder of documents
        texts = folder / name
        texts.mkdir(exist_ok=True)
        for file_name, text in rows.items():
            path = texts / file_name
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
        return texts
    path = folder / f"{name}.jsonl"
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path
