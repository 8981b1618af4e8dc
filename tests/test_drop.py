"""The DROP metric against hand-worked cases that mirror the official evaluation script."""
from __future__ import annotations

import pytest

from jobs.decompose.drop import answer_json_to_strings, normalize_answer, score_question
from jobs.decompose.job import drop_score

EMPTY_DATE = {"day": "", "month": "", "year": ""}

# (predicted, gold, em, f1): each worked by hand from the official rules.
CASES = [
    # articles, case and punctuation go; what is left must match
    ("the cat", "cat", 1.0, 1.0),
    ("The Cat.", "a cat", 1.0, 1.0),
    ("St. Louis", "st louis", 1.0, 1.0),
    # numbers compare as floats
    ("5.0", "5", 1.0, 1.0),
    ("1e3", "1000", 1.0, 1.0),
    # a word is not a number: "two" leaves the gold's 2 unmatched, so the number rule zeroes F1
    ("two", "2", 0.0, 0.0),
    # punctuation inside a number: "1,000" is not a float, loses its comma, then is 1000.0
    ("1,000", "1000", 1.0, 1.0),
    # "3.5%" is not a float either: the dot goes with the % and it reads 35 (the official quirk)
    ("3.5%", "35", 1.0, 1.0),
    ("3.5%", "3.5", 0.0, 0.0),
    # hyphens split tokens, so a minus sign is lost and "well-known" is two words
    ("-5", "5", 1.0, 1.0),
    ("well-known author", "well known author", 1.0, 1.0),
    # the number rule: gold numbers with none in the prediction zero the pair
    ("12 yards", "15 yards", 0.0, 0.0),
    # one number shared: plain bag F1, P = 2/3, R = 1 -> 0.8
    ("15 yards long", "15 yards", 0.0, 0.8),
    # bags are sets: a repeated word costs exact match but not F1
    ("yes yes", "yes", 0.0, 1.0),
    # rounding to 2 decimals: P = 1, R = 1/2 -> 2/3 -> 0.67; P = 1/2, R = 1/3 -> 0.4
    ("x y z", "x y z w v u", 0.0, 0.67),
    ("p q", "p r s", 0.0, 0.4),
    # an empty prediction against a real answer: precision 1, recall 0 -> F1 0
    ("", "cat", 0.0, 0.0),
    # several spans: order does not matter, count does
    (["Blue", "Red"], ["red", "blue"], 1.0, 1.0),
    (["Blue"], ["Red", "Blue"], 0.0, 0.5),  # two slots: 1 and 0
    (["Blue", "Red", "Green"], ["Red", "Blue"], 0.0, 0.67),  # three slots: 1, 1, 0
    # one-to-one alignment by maximum matching: "x y" may take either prediction, but only
    # giving it "y" leaves "x" for the gold "x": (2/3 + 1) / 2 = 0.83
    (["x", "y"], ["x y", "x"], 0.0, 0.83),
    # the mean before rounding is 0.125 (P = 1/7, R = 1 -> 0.25 in one of two slots); numpy
    # rounds half to even
    (["k b c d e f g"], ["k", "m"], 0.0, 0.12),
    # a string prediction against a one-span list is the same thing
    ("Sam Pike", ["Sam Pike"], 1.0, 1.0),
]


@pytest.mark.parametrize("predicted,gold,em,f1", CASES)
def test_drop_score_matches_hand_worked_cases(predicted, gold, em, f1):
    assert drop_score(predicted, gold) == (em, f1), f"{predicted!r} vs {gold!r}"


def test_normalisation_steps():
    assert normalize_answer("The  Harbor-City Gulls!") == "harbor city gulls"
    assert normalize_answer("1,000 yards") == "1000.0 yards"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("the") == ""


def test_answer_objects_to_strings():
    assert answer_json_to_strings({"number": "12", "spans": [], "date": EMPTY_DATE}) == (("12",), "number")
    assert answer_json_to_strings({"number": "", "spans": ["a"], "date": EMPTY_DATE}) == (("a",), "span")
    assert answer_json_to_strings({"number": "", "spans": ["a", "b"], "date": EMPTY_DATE}) == (("a", "b"), "spans")
    assert answer_json_to_strings({"number": "", "spans": [], "date": {"day": "4", "month": "May", "year": "1862"}}) \
        == (("4 May 1862",), "date")
    with pytest.raises(ValueError, match="number, spans or a date"):
        answer_json_to_strings({"number": "", "spans": []})


def test_a_question_scores_its_best_answer_and_skips_empty_ones():
    answer = {"number": "", "spans": ["William Smith"], "date": EMPTY_DATE}
    validated = [{"number": "", "spans": ["Bill"], "date": EMPTY_DATE},
                 {"number": "", "spans": [], "date": EMPTY_DATE}]  # an empty gold is never scored
    assert score_question("Bill", [answer, *validated]) == (1.0, 1.0, "span")
    assert score_question("Smith", [answer, *validated]) == (0.0, 0.67, "span")
    # the type is that of the candidate attaining both maxima (the official breakdown)
    number_then_date = [{"number": "1862", "spans": [], "date": EMPTY_DATE},
                        {"number": "", "spans": [], "date": {"day": "12", "month": "May", "year": "1862"}}]
    assert score_question("12 May 1862", number_then_date) == (1.0, 1.0, "date")
    assert score_question("nothing", [{"number": "", "spans": [], "date": EMPTY_DATE}]) == (0.0, 0.0, "date")
