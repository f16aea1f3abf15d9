"""A small command grammar for the synthetic corpus.

Sentences are voice-assistant commands built from templates (alarms, reminders,
calls, messages, weather, shopping, smart home, navigation, bookings ...) filled with
numbers, times, dates, names and places. Every word is lower-case ASCII with no
digits or punctuation, so espeak reads what the transcript says and the scoring
needs no normalisation. The fixed template structure is what lets a language model
help: "set an alarm for" is always followed by a time.
"""

import random
from typing import Callable, Dict, List, Sequence, Set, Tuple

FIRST_NAMES = (
    "alice bob carol david emma frank grace henry irene jack karen liam maria nathan "
    "olivia peter quinn rachel samuel tina victor wendy xavier yvonne zachary anna "
    "brian chloe daniel ella felix george hannah isaac julia kevin laura martin nina "
    "oscar paula robert sophie thomas ursula vincent william amelia benjamin charlotte"
).split()
SURNAMES = (
    "smith jones taylor brown wilson evans thomas johnson roberts walker wright "
    "robinson thompson white hughes edwards green hall wood harris clarke jackson"
).split()
CITIES = (
    "london paris berlin madrid rome vienna dublin lisbon prague warsaw oslo "
    "stockholm helsinki athens cairo tokyo sydney toronto boston chicago denver "
    "seattle dallas miami atlanta glasgow edinburgh manchester liverpool bristol"
).split()
PLACES = (
    "the airport", "the station", "the office", "the library", "the hospital",
    "the museum", "the beach", "the stadium", "the school", "the pharmacy",
    "the bakery", "the harbour", "the market", "the cinema", "the gym", "the park",
    "the nearest petrol station", "the city centre", "my home", "my parents house",
)
ITEMS = (
    "apples bananas oranges lemons grapes cherries carrots potatoes onions tomatoes "
    "peppers mushrooms lettuce cucumbers garlic rice pasta bread butter cheese milk "
    "eggs yoghurt flour sugar salt coffee tea juice water biscuits cereal honey jam "
    "chicken beef salmon sausages beans peas soup chocolate crisps napkins soap "
    "shampoo toothpaste batteries candles envelopes stamps"
).split()
ROOMS = (
    "kitchen bedroom bathroom garage hallway garden basement attic office nursery "
    "lounge conservatory"
).split()
DEVICES = (
    "lights heating fan radio television oven dishwasher kettle heater speaker "
    "printer camera alarm sprinkler"
).split()
GENRES = "jazz rock classical blues reggae country folk disco techno opera swing soul".split()
ACTIVITIES = (
    "pay the electricity bill", "water the plants", "feed the cat", "walk the dog",
    "take my medicine", "pick up the kids", "buy a birthday present",
    "book a dentist appointment", "renew my passport", "clean the windows",
    "return the library books", "charge my phone", "call the plumber",
    "check the tyres", "send the invoice", "cancel the subscription",
    "bring an umbrella", "collect the parcel", "lock the back door",
    "prepare the quarterly report", "practise the guitar", "empty the bins",
)
WEATHER = "weather forecast temperature humidity wind rain snow".split()
UNITS = "minutes hours seconds".split()
COLOURS = "red green blue yellow purple orange white warm cool".split()

ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
MONTHS = "january february march april may june july august september october november december".split()
WEEKDAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
ORDINALS = (
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh "
    "twelfth thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth "
    "nineteenth twentieth"
).split()


def number_words(n: int) -> str:
    """Spell 0 <= n < 1000 in words ("three hundred and forty two")."""
    if not 0 <= n < 1000:
        raise ValueError(f"number_words supports 0..999, got {n}")
    if n < 20:
        return ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return TENS[tens - 2] + ("" if ones == 0 else " " + ONES[ones])
    hundreds, rest = divmod(n, 100)
    head = f"{ONES[hundreds]} hundred"
    return head if rest == 0 else f"{head} and {number_words(rest)}"


def ordinal_words(n: int) -> str:
    """1..31 as an ordinal ("twenty third")."""
    if not 1 <= n <= 31:
        raise ValueError(f"ordinal_words supports 1..31, got {n}")
    if n <= 20:
        return ORDINALS[n - 1]
    tens, ones = divmod(n, 10)
    base = TENS[tens - 2]
    return base[:-1] + "ieth" if ones == 0 else f"{base} {ORDINALS[ones - 1]}"


# ---- slot fillers: each takes the rng and returns words -------------------------


def _time(r: random.Random) -> str:
    hour = r.randint(1, 12)
    kind = r.randrange(6)
    if kind == 0:
        return f"{ONES[hour]} o clock"
    if kind == 1:
        return f"half past {ONES[hour]}"
    if kind == 2:
        return f"quarter {r.choice(['past', 'to'])} {ONES[hour]}"
    if kind == 3:
        return r.choice(["noon", "midnight", "sunrise", "sunset"])
    minute = r.choice([5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55])
    tail = r.choice(["", " in the morning", " in the evening", " at night", " in the afternoon"])
    return f"{ONES[hour]} {number_words(minute)}{tail}"


def _date(r: random.Random) -> str:
    kind = r.randrange(5)
    if kind == 0:
        return r.choice(WEEKDAYS)
    if kind == 1:
        return f"next {r.choice(WEEKDAYS)}"
    if kind == 2:
        return r.choice(["today", "tomorrow", "tonight", "the day after tomorrow", "this weekend"])
    month, day = r.choice(MONTHS), ordinal_words(r.randint(1, 28))
    if kind == 3:
        return f"the {day} of {month}"
    return f"{month} the {day}"


def _name(r: random.Random) -> str:
    return r.choice(FIRST_NAMES) + (f" {r.choice(SURNAMES)}" if r.random() < 0.4 else "")


def _count(r: random.Random) -> str:
    return number_words(r.choice([r.randint(1, 20), r.randint(21, 99), r.randint(100, 999)]))


SLOTS: Dict[str, Callable[[random.Random], str]] = {
    "time": _time,
    "date": _date,
    "name": _name,
    "first": lambda r: r.choice(FIRST_NAMES),
    "city": lambda r: r.choice(CITIES),
    "place": lambda r: r.choice(PLACES),
    "item": lambda r: r.choice(ITEMS),
    "room": lambda r: r.choice(ROOMS),
    "device": lambda r: r.choice(DEVICES),
    "genre": lambda r: r.choice(GENRES),
    "activity": lambda r: r.choice(ACTIVITIES),
    "weather": lambda r: r.choice(WEATHER),
    "unit": lambda r: r.choice(UNITS),
    "colour": lambda r: r.choice(COLOURS),
    "small": lambda r: number_words(r.randint(2, 12)),
    "count": _count,
    "degrees": lambda r: number_words(r.randint(15, 30)),
    "percent": lambda r: number_words(r.choice(range(10, 101, 10))),
}

# (weight, template). Short templates get low weight: they have few distinct fillings.
TEMPLATES: Tuple[Tuple[float, str], ...] = (
    (3, "set an alarm for {time}"),
    (2, "set an alarm for {time} {date}"),
    (2, "wake me up at {time}"),
    (3, "remind me to {activity} {date} at {time}"),
    (2, "remind me to {activity} at {time}"),
    (2, "call {name}"),
    (2, "call {name} {date} at {time}"),
    (3, "send a message to {name} saying i will be at {place} at {time}"),
    (2, "text {first} that the meeting moved to {date}"),
    (2, "what is the {weather} in {city} {date}"),
    (2, "will it rain in {city} {date}"),
    (3, "add {small} {item} and {item} to my shopping list"),
    (2, "add {item} to the shopping list"),
    (2, "turn on the {device} in the {room}"),
    (2, "turn off the {device} in the {room}"),
    (2, "set the {room} lights to {colour} at {percent} percent"),
    (2, "set the thermostat in the {room} to {degrees} degrees"),
    (2, "play some {genre} music in the {room}"),
    (2, "navigate to {place} in {city}"),
    (2, "how long does it take to drive to {place}"),
    (3, "book a table for {small} people {date} at {time}"),
    (2, "book a flight to {city} for {date}"),
    (2, "schedule a meeting with {name} and {first} {date} at {time}"),
    (2, "start a timer for {count} {unit}"),
    (2, "what is {count} plus {count}"),
    (2, "what is {count} times {small}"),
    (2, "transfer {count} pounds to {name}"),
    (2, "how many {item} are left in the fridge"),
    (1, "cancel my appointment {date}"),
    (1, "move my {time} meeting to {date}"),
    (1, "read my messages from {first}"),
    (1, "what time is it in {city}"),
)

_SLOT_PATTERN_CACHE: Dict[str, List[Tuple[bool, str]]] = {}


def _parse(template: str) -> List[Tuple[bool, str]]:
    """'call {name} now' -> [(False, 'call'), (True, 'name'), (False, 'now')]."""
    if template not in _SLOT_PATTERN_CACHE:
        parts = []
        for word in template.split():
            is_slot = word.startswith("{") and word.endswith("}")
            parts.append((is_slot, word[1:-1] if is_slot else word))
        _SLOT_PATTERN_CACHE[template] = parts
    return _SLOT_PATTERN_CACHE[template]


def sample_sentence(rng: random.Random) -> str:
    """One random sentence from the grammar."""
    weights = [w for w, _ in TEMPLATES]
    template = rng.choices([t for _, t in TEMPLATES], weights=weights, k=1)[0]
    words = [SLOTS[name](rng) if is_slot else name for is_slot, name in _parse(template)]
    return " ".join(words)


def unique_sentences(num: int, seed: int, max_tries_factor: int = 50) -> List[str]:
    """``num`` distinct sentences, deterministic for ``seed`` (in draw order)."""
    rng = random.Random(seed)
    seen: Set[str] = set()
    out: List[str] = []
    for _ in range(num * max_tries_factor):
        if len(out) == num:
            break
        sentence = sample_sentence(rng)
        if sentence not in seen:
            seen.add(sentence)
            out.append(sentence)
    if len(out) < num:
        raise ValueError(f"the grammar yielded only {len(out)} distinct sentences, {num} asked")
    return out


def vocabulary() -> Set[str]:
    """Every word the grammar can produce (template words, fillers, numbers)."""
    words: Set[str] = set()
    for _, template in TEMPLATES:
        words.update(name for is_slot, name in _parse(template) if not is_slot)
    for group in (FIRST_NAMES, SURNAMES, CITIES, ITEMS, ROOMS, DEVICES, GENRES, WEATHER,
                  UNITS, COLOURS, ONES, TENS, MONTHS, WEEKDAYS, ORDINALS):
        words.update(group)
    for phrase_group in (PLACES, ACTIVITIES):
        for phrase in phrase_group:
            words.update(phrase.split())
    words.update("o clock half past quarter to noon midnight sunrise sunset in the morning "
                 "evening at night afternoon next today tomorrow tonight day after this "
                 "weekend of hundred and twentieth thirtieth".split())
    return words


def split_disjoint(sentences: Sequence[str], sizes: Dict[str, int]) -> Dict[str, List[str]]:
    """Slice ``sentences`` (already distinct) into named, pairwise disjoint lists."""
    needed = sum(sizes.values())
    if needed > len(sentences):
        raise ValueError(f"need {needed} sentences for {sizes}, have {len(sentences)}")
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = list(sentences[start:start + size])
        start += size
    return out
