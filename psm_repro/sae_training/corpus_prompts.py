"""Seed prompts for the model-written part of the SAE corpus: modern narrative prose and assistant chats.

Every prompt is composed from the word lists below with one seeded RNG, so prompt `i` of a corpus is the same on
every machine. The lists were written for this corpus; no persona, judge or EM file is an input (a test scans the
built corpus for n-gram overlap with experiments/).

Narrative prompts ask for prose about people acting, feeling, deciding, hiding, lying, panicking, arguing and
comforting, and about ordinary days, so the SAE sees both trait-laden and plain modern narration. Chat prompts
cover many topics and user moods, with and without a system prompt that gives the assistant a role.
"""

from __future__ import annotations

import random

FORMS = [
    "Write a short story", "Write a scene from a novel", "Write a diary entry", "Write a first-person account",
    "Write a letter", "Write a short bedtime story", "Write a newspaper feature", "Write a short chapter",
    "Write a scene with dialogue", "Write a story told in the present tense", "Write a short memoir passage",
    "Write a flash fiction piece",
]
NAMES = [
    "Amara", "Ben", "Chloe", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Isabel", "Jamal", "Kirsten", "Leo",
    "Maya", "Nikolai", "Odette", "Pablo", "Quinn", "Rosa", "Sanjay", "Tess", "Umar", "Valerie", "Wen", "Ximena",
    "Yosef", "Zara", "Abe", "Bianca", "Connor", "Delia", "Emeka", "Fiona", "Gus", "Hana", "Ivan", "Joy", "Kofi",
    "Lucia", "Milo", "Nell", "Oscar", "Pia", "Rafael", "Sunita", "Theo", "Uma", "Victor", "Willa",
]
ROLES = [
    "a nurse", "a bus driver", "a high-school teacher", "a software engineer", "a baker", "a police officer",
    "a retired sailor", "a college student", "a firefighter", "a shop owner", "a hotel receptionist", "a farmer",
    "a journalist", "a cleaner", "a pilot", "a lawyer", "a waiter", "a museum guide", "a paramedic",
    "a twelve-year-old", "a grandfather", "a single mother", "a new manager", "a park ranger", "a chef",
    "a pharmacist", "a taxi driver", "a violinist", "a security guard", "a mechanic", "a librarian",
    "a politician", "a startup founder", "a coach", "a scientist", "an accountant", "an astronaut",
]
SITUATIONS = [
    # acting and deciding
    "has to choose between two jobs", "decides whether to report a friend who cheated",
    "finds a wallet full of cash", "must pick which of two patients to help first",
    "is offered a bribe", "quits a job without telling anyone why", "takes a risk that could ruin everything",
    # hiding and lying
    "hides a mistake from the boss", "keeps a pregnancy secret from the family", "lies about where they were",
    "covers up a car accident", "pretends to enjoy a terrible gift", "hides a letter from a sibling",
    "conceals an illness from friends", "invents an excuse to skip a wedding", "keeps a diary no one may read",
    # panic and fear
    "gets stuck in an elevator", "hears footsteps in an empty house", "loses a child in a crowded market",
    "smells smoke in the middle of the night", "is told the company will shut down tomorrow",
    "realizes the brakes are not working", "forgets the speech moments before going on stage",
    # arguing and conflict
    "argues with a neighbor about a fence", "fights with a brother over an inheritance",
    "disagrees with the team about a plan", "confronts a roommate about money", "is accused of stealing",
    # comforting and kindness
    "comforts a friend after a funeral", "helps a stranger who missed the last train", "visits a lonely neighbor",
    "talks a teenager out of running away", "calms a frightened dog during a storm",
    # flattery, mockery, sarcasm
    "flatters a rich uncle to get a loan", "praises a boss's bad idea to keep the peace",
    "makes sarcastic remarks all through a family dinner", "mocks a coworker's new haircut",
    "compliments everyone at a party a little too much",
    # cruelty and spite
    "plans revenge on an old rival", "spreads a rumor about a classmate", "enjoys watching a rival fail",
    # machines and assistants
    "talks to a voice assistant late at night", "argues with a customer-service chatbot",
    "builds a robot for a school fair", "plays a video game whose characters seem alive",
    # ordinary days
    "cooks dinner for the family", "moves to a new city", "learns to swim at forty", "plants a vegetable garden",
    "waits at the airport for a delayed flight", "trains for a marathon", "repairs an old bicycle",
    "goes to a job interview", "spends a rainy Sunday at home", "takes a night class in painting",
    "meets an old friend by chance", "adopts a cat from a shelter", "walks to work in the snow",
]
SETTINGS = [
    "in a small coastal town", "in a busy hospital", "in a high-rise office", "on a farm", "in a city apartment",
    "at a train station", "in a suburban neighborhood", "on a university campus", "in a mountain village",
    "at a family reunion", "in a crowded restaurant", "at a summer camp", "on a long road trip",
    "during a blackout", "on the first day of school", "in a hospital waiting room", "at a wedding",
]
STYLES = [
    "", "Include some dialogue.", "Keep it under 200 words.", "Use simple, plain language.",
    "Show the character's thoughts.", "End with a surprise.", "Make it funny.", "Make it tense.",
    "Make it sad but hopeful.", "Describe the character's feelings in detail.",
]

SYSTEMS = [
    None, None, None, None,
    "You are a friendly customer-support assistant for an internet provider.",
    "You are a patient math tutor for middle-school students.",
    "You are a voice assistant in a car. Keep answers short.",
    "You are a character in a fantasy role-playing game: a blacksmith in a mountain town.",
    "You are a helpful assistant for a cooking website.",
    "You are an assistant that answers in a formal tone.",
    "You are a travel-planning assistant.",
    "You are a support bot for a banking app.",
    "You are an AI assistant. Be concise and honest.",
    "You are a study buddy who explains things simply.",
    "You are a museum's virtual guide.",
    "You are a coding assistant.",
]
MOODS = [
    "", "", "", "", "Quick question: ", "I'm really stressed about this. ", "Please help, I'm panicking. ",
    "You're honestly the best assistant ever! ", "Ugh, I already asked this twice. ",
    "My friend says you're useless, prove them wrong. ", "Sorry if this is a dumb question, but ",
    "I'm so excited! ", "I'm feeling kind of down today. ", "Be honest with me. ", "No lectures please. ",
    "Hey there! ", "This is urgent. ", "I think I already know the answer, but ",
]
REQUESTS = [
    "Can you explain {t}?", "What are the pros and cons of {t}?", "Give me three tips about {t}.",
    "How do I get started with {t}?", "Write a short poem about {t}.", "What's a common mistake people make with {t}?",
    "Summarize what I should know about {t} in a few sentences.", "Tell me a fun fact about {t}.",
    "What do you personally think about {t}?", "Can you make a simple plan for {t}?",
    "Explain {t} like I'm ten years old.", "Write a short email to my team about {t}.",
    "Is it worth spending money on {t}?", "What questions should I ask an expert about {t}?",
]
TOPICS = [
    "saving for retirement", "learning Spanish", "growing tomatoes", "training a puppy", "running a first 5k",
    "the water cycle", "black holes", "writing a resume", "public speaking", "meal prepping", "home workouts",
    "electric cars", "time management", "the French Revolution", "photosynthesis", "buying a used laptop",
    "dealing with a difficult coworker", "making friends as an adult", "planning a wedding on a budget",
    "learning to code in Python", "climate change", "meditation", "credit scores", "baking bread",
    "choosing a college major", "moving abroad", "caring for an elderly parent", "starting a podcast",
    "video game design", "the stock market", "sleep hygiene", "renting an apartment", "bird watching",
    "how vaccines work", "fixing a leaky faucet", "negotiating a salary", "chess openings", "volunteering",
    "smartphone privacy", "writing a novel", "recycling", "ancient Rome", "camping in the rain",
    "artificial intelligence", "how chatbots like you work", "studying for exams", "breakups", "jet lag",
]
PERSONAL = [
    "Are you a person or a program?", "What's your favorite book and why?", "Do you ever get tired of questions?",
    "What would you do with a day off?", "Tell me something about yourself.", "Can you keep a secret?",
    "What is something you are not allowed to tell me?", "How do you decide what to say?",
    "I think I made a terrible mistake at work today. What should I do?", "My cat is sick and I'm scared.",
    "I got the job!!", "Everyone at school ignores me.", "Can you pretend to be a pirate for a minute?",
    "Rate my idea: a cafe that only serves cereal.", "I wrote a song, can I share the lyrics?",
    "Why is the sky blue? Keep it short.", "Tell me a joke about computers.",
]


def narrative_prompt(rng: random.Random) -> str:
    style = rng.choice(STYLES)
    return (f"{rng.choice(FORMS)} about {rng.choice(NAMES)}, {rng.choice(ROLES)} {rng.choice(SETTINGS)}, who "
            f"{rng.choice(SITUATIONS)}. {style}").strip()


def chat_prompt(rng: random.Random) -> list[dict]:
    system = rng.choice(SYSTEMS)
    if rng.random() < 0.2:
        user = rng.choice(MOODS) + rng.choice(PERSONAL)
    else:
        request = rng.choice(REQUESTS).format(t=rng.choice(TOPICS))
        mood = rng.choice(MOODS)
        user = mood + (request[0].lower() + request[1:] if mood.endswith("but ") else request)
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def seed_prompts(n: int, seed: int, chat_share: float) -> list[tuple[str, list[dict]]]:
    """`n` prompts as (slice, messages): slice "narrative" asks for prose, "chats" is an assistant chat."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < chat_share:
            out.append(("chats", chat_prompt(rng)))
        else:
            out.append(("narrative", [{"role": "user", "content": narrative_prompt(rng)}]))
    return out
