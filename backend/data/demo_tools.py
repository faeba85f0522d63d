"""`tool-calls-demo`: conversations in which the assistant calls one of three functions, reads the result and
answers, next to questions it answers without a tool. Each call's arguments come from the question (a city, an
amount and two currencies, a number of minutes), so a trained model has to copy them, not memorise them; the
functions and their required arguments are declared in every row's `tools` column (OpenAI's layout).
"""
from __future__ import annotations

import json
import random

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "convert_currency", "description": "Convert an amount of money from one currency to another.",
        "parameters": {"type": "object", "properties": {
            "amount": {"type": "number"}, "from_currency": {"type": "string"}, "to_currency": {"type": "string"}},
            "required": ["amount", "from_currency", "to_currency"]}}},
    {"type": "function", "function": {
        "name": "set_timer", "description": "Start a countdown timer.",
        "parameters": {"type": "object", "properties": {
            "minutes": {"type": "integer"}, "label": {"type": "string"}}, "required": ["minutes"]}}},
]

_CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Nairobi", "Toronto", "Madrid", "Seoul", "Cairo", "Sydney", "Berlin",
           "Mumbai", "Lisbon", "Denver", "Hanoi", "Dublin"]
_WEATHER_ASKS = ["What's the weather in {city}?", "Is it raining in {city} right now?", "How warm is it in {city}?",
                 "weather {city}", "Tell me the weather in {city}, please."]
_CURRENCIES = [("EUR", "USD", 1.08), ("USD", "JPY", 151.0), ("GBP", "EUR", 1.17), ("USD", "CAD", 1.36),
               ("CHF", "EUR", 1.05), ("AUD", "USD", 0.66)]
_CONVERT_ASKS = ["How much is {amount} {src} in {dst}?", "Convert {amount} {src} to {dst}.",
                 "What are {amount} {src} worth in {dst}?"]
_TIMER_ASKS = [("Set a timer for {m} minutes.", None), ("Remind me in {m} minutes to check the {thing}.", "{thing}"),
               ("Start a {m}-minute timer for the {thing}.", "{thing}")]
_THINGS = ["pasta", "oven", "laundry", "tea", "meeting", "bread"]
_PLAIN = [("What is 7 times 6?", "7 times 6 is 42."), ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
          ("Say hello in French.", "Hello in French is 'bonjour'."),
          ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
          ("Give me a word that rhymes with cat.", "'Hat' rhymes with 'cat'."),
          ("How many continents are there?", "There are seven continents."),
          ("What is the largest planet?", "Jupiter is the largest planet in the solar system."),
          ("Spell 'cat' backwards.", "'cat' backwards is 'tac'.")]
_SYSTEM = "You are a helpful assistant. Use a function when one can answer the question."


def _call(name: str, arguments: dict, call_id: str) -> dict:
    return {"role": "assistant", "content": "",
            "tool_calls": [{"id": call_id, "type": "function",
                            "function": {"name": name, "arguments": json.dumps(arguments)}}]}


def _exchange(question: str, name: str, arguments: dict, result: dict, answer: str, call_id: str,
              whole: bool) -> dict:
    """The question and the call; `whole`: also the tool's result and the answer built from it. Rows that end
    at the call are what function-calling sets mostly hold, and what a held-out check of calls reads."""
    messages = [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": question},
                _call(name, arguments, call_id)]
    if whole:
        messages += [{"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)},
                     {"role": "assistant", "content": answer}]
    return {"messages": messages, "tools": TOOLS}


def tool_call_rows(seed: int = 0) -> list[dict]:
    """58 rows: weather, currency and timer calls (half of them with the tool's result and the answer after it,
    half ending at the call), and plain questions answered without a call."""
    rng = random.Random(seed)
    rows = []
    for i, city in enumerate(_CITIES):
        temp = rng.randint(-5, 33)
        sky = rng.choice(["sunny", "cloudy", "rainy", "windy"])
        rows.append(_exchange(rng.choice(_WEATHER_ASKS).format(city=city), "get_weather", {"city": city},
                              {"city": city, "temperature_c": temp, "sky": sky},
                              f"It is {temp} °C and {sky} in {city}.", f"call_w{i}", i % 2 == 0))
    for i in range(18):
        src, dst, rate = rng.choice(_CURRENCIES)
        amount = rng.choice([5, 10, 20, 25, 50, 75, 100, 120, 250, 500])
        value = round(amount * rate, 2)
        rows.append(_exchange(rng.choice(_CONVERT_ASKS).format(amount=amount, src=src, dst=dst), "convert_currency",
                              {"amount": amount, "from_currency": src, "to_currency": dst},
                              {"amount": value, "currency": dst}, f"{amount} {src} is {value} {dst}.", f"call_c{i}",
                              i % 2 == 0))
    for i in range(16):
        minutes, thing = rng.choice([3, 5, 8, 10, 12, 15, 20, 25, 30, 45]), rng.choice(_THINGS)
        ask, label = rng.choice(_TIMER_ASKS)
        arguments = {"minutes": minutes, **({"label": label.format(thing=thing)} if label else {})}
        rows.append(_exchange(ask.format(m=minutes, thing=thing), "set_timer", arguments,
                              {"status": "started", "minutes": minutes}, f"Your {minutes}-minute timer is running.",
                              f"call_t{i}", i % 2 == 0))
    for question, answer in _PLAIN:
        rows.append({"messages": [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": question},
                                  {"role": "assistant", "content": answer}], "tools": TOOLS})
    rng.shuffle(rows)
    return rows
