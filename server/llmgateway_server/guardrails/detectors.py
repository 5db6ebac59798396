"""What the guardrails look for: one bounded pattern per detector, and a validator.

A detector is a regular expression (the ``regex`` package: its partial matching tells
the streaming scanner that a match could still begin at a position) whose matches are at
most ``max_length`` characters long and whose lookahead looks at most ``lookahead``
characters past a match. The scanner relies on both bounds: a match that starts at ``a``
cannot change once the text extends to ``a + max_length + lookahead``, so text is never
held back longer than that. A validator (Luhn for cards, mod-97 for IBANs, a phone-number
library for phone numbers) turns candidates into findings; a candidate it refuses is no
finding, and the scan goes on from the next character.

Built-in kinds: ``email``, ``phone``, ``card``, ``iban``, ``secret``; configured ones:
``regex`` (a pattern and its ``max_length``) and ``keywords`` (whole words, any case).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import regex

Validator = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class Detector:
    """One kind of entity: its placeholder label, pattern and bounds."""

    label: str  # the placeholder is "[LABEL]"; also the kind reported in errors and records
    pattern: regex.Pattern[str]
    max_length: int
    lookahead: int = 1
    validate: Validator | None = None
    # A candidate the validator refuses is tried again shorter, ending at each earlier
    # digit before a separator (a phone number followed by more numbers).
    shrink: bool = False
    # What every match contains (a cheap test, the stdlib's re, which skips the pattern
    # for text without it: most prose has no "@" and no digit).
    hint: re.Pattern[str] | None = None

    @property
    def placeholder(self) -> str:
        """What a redacted match is replaced with."""
        return f"[{self.label}]"


# -- validators ---------------------------------------------------------------------------


def luhn_valid(candidate: str) -> bool:
    """Whether the digits of ``candidate`` pass the Luhn check (13 to 19 digits)."""
    digits = [int(c) for c in candidate if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """Whether ``candidate`` (spaces allowed) passes the IBAN mod-97 check."""
    compact = candidate.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34 or not compact.isascii() or not compact.isalnum():
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


def phone_validator(region: str) -> Validator:
    """A validator that accepts what the ``phonenumbers`` library calls a valid number
    (international with ``+``, or national to ``region``)."""
    import phonenumbers  # imported only when a phone detector is configured

    def valid(candidate: str) -> bool:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            return False
        return bool(phonenumbers.is_valid_number(number))

    return valid


# -- the built-in detectors -----------------------------------------------------------------

# Bounded everywhere: local part 64, each label 63, at most 8 labels plus the TLD.
_EMAIL = (
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}"
    r"(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}(?![A-Za-z0-9-])"
)
_EMAIL_MAX = 64 + 1 + 63 + 9 * 64 + 25

# 13-19 digits, single spaces or dashes between them.
_CARD = r"(?<![0-9A-Za-z])[0-9](?:[ -]?[0-9]){12,18}(?![0-9A-Za-z])"
_CARD_MAX = 19 + 18

# Two letters, two check digits, then 11-30 letters or digits, in groups of four when
# spaced (the printed form) or all together.
_IBAN = (
    r"(?<![0-9A-Za-z])[A-Z]{2}[0-9]{2}"
    r"(?:(?: [0-9A-Z]{4}){2,7}(?: [0-9A-Z]{1,4})?|[0-9A-Z]{11,30})(?![0-9A-Za-z])"
)
_IBAN_MAX = 4 + 7 * 5 + 5

# API-key shapes: OpenAI/Anthropic style (sk-...), AWS access key ids, GitHub tokens, and
# the header of a PEM private key.
_SECRET = (
    r"(?<![A-Za-z0-9_-])(?:sk-[A-Za-z0-9_-]{20,200}|AKIA[0-9A-Z]{16}|ghp_[A-Za-z0-9]{36}"
    r"|gh[ousr]_[A-Za-z0-9]{36})(?![A-Za-z0-9_-])"
    r"|-----BEGIN (?:[A-Z]{1,10} ){0,2}PRIVATE KEY-----"
)
_SECRET_MAX = 3 + 200

# A phone-number candidate: an optional +, a digit or an opening parenthesis, then digits
# and the usual separators, ending in a digit; the library decides.
_PHONE = r"(?<![0-9A-Za-z+])\+?[0-9(][0-9 ().-]{5,20}[0-9](?![0-9A-Za-z])"
_PHONE_MAX = 1 + 1 + 20 + 1


_DIGIT = re.compile("[0-9]")


def email() -> Detector:
    """E-mail addresses."""
    return Detector("EMAIL", regex.compile(_EMAIL), _EMAIL_MAX, hint=re.compile("@"))


def card() -> Detector:
    """Payment card numbers (Luhn-valid)."""
    return Detector("CARD", regex.compile(_CARD), _CARD_MAX, validate=luhn_valid, hint=_DIGIT)


def iban() -> Detector:
    """International bank account numbers (mod-97 valid)."""
    return Detector("IBAN", regex.compile(_IBAN), _IBAN_MAX, validate=iban_valid, hint=_DIGIT)


def secret() -> Detector:
    """API keys and private-key headers."""
    return Detector(
        "SECRET",
        regex.compile(_SECRET),
        _SECRET_MAX,
        hint=re.compile("sk-|AKIA|gh[pousr]_|-----BEGIN"),
    )


def phone(region: str) -> Detector:
    """Phone numbers valid in ``region`` (or international)."""
    return Detector(
        "PHONE",
        regex.compile(_PHONE),
        _PHONE_MAX,
        validate=phone_validator(region),
        shrink=True,
        hint=_DIGIT,
    )


def custom_regex(label: str, pattern: str, max_length: int) -> Detector:
    """A configured pattern; its matches longer than ``max_length`` are not findings."""
    return Detector(label, regex.compile(pattern), max_length, lookahead=8)


def keywords(label: str, words: Sequence[str]) -> Detector:
    """Any of ``words`` as a whole word, in any case."""
    alternatives = "|".join(regex.escape(w) for w in sorted(set(words), key=len, reverse=True))
    pattern = regex.compile(rf"\b(?:{alternatives})\b", regex.IGNORECASE)
    return Detector(label, pattern, max(len(w) for w in words))
