"""Likely personal data in event payloads: what kind a key or value looks like, and the same text
with it redacted. Pure functions, no I/O.

Values are recognised by what they are (an email address that email-validator accepts, a phone
number that libphonenumber finds valid, an IPv4 or IPv6 address, a 13 to 19 digit card number that
passes the Luhn check, a street address or an honorific and a name), also inside free text;
names and postal addresses also by their key (`first_name`, `street`, `zip`, ...).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

import phonenumbers
from email_validator import EmailNotValidError, validate_email


class PiiKind:
    EMAIL = "email"
    PHONE = "phone"
    IP = "ip"
    CARD = "card"
    NAME = "name"
    ADDRESS = "address"
    # A path an owner confirmed as personal data although no detector flagged it.
    CONFIRMED = "pii"

    ALL = (EMAIL, PHONE, IP, CARD, NAME, ADDRESS)


# Keys (lowercased, with `-`, spaces and `_` removed) that hold a person's name or postal address.
NAME_KEYS = frozenset(
    {
        "name",
        "firstname",
        "lastname",
        "fullname",
        "givenname",
        "familyname",
        "surname",
        "middlename",
        "maidenname",
        "displayname",
        "contactname",
        "customername",
        "username",
        "nickname",
    }
)
ADDRESS_KEYS = frozenset(
    {
        "address",
        "address1",
        "address2",
        "addressline1",
        "addressline2",
        "streetaddress",
        "street",
        "streetname",
        "postcode",
        "postalcode",
        "zip",
        "zipcode",
        "city",
        "town",
        "billingaddress",
        "shippingaddress",
        "homeaddress",
    }
)
PHONE_KEYS = frozenset({"phone", "phonenumber", "mobile", "mobilenumber", "cell", "telephone", "tel"})

_EMAIL_CANDIDATE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
# Digits with optional single spaces or dashes between them: 13 to 19 digits (a card number).
_CARD_CANDIDATE = re.compile(r"(?<!\d)(?<!\d\.)\d(?:[ \-]?\d){12,18}(?!\d|\.\d)")
_IPV4_CANDIDATE = re.compile(r"(?<!\d)(?<!\d\.)(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d)")
_IPV6_CANDIDATE = re.compile(r"(?<![0-9A-Za-z:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![0-9A-Za-z:])")
# An IPv6 address in text has at least this many hex digits (`::` and `a::b` are not worth flagging).
_IPV6_MIN_HEX_DIGITS = 3
_STREET_ADDRESS = re.compile(
    r"\b\d{1,5}[A-Za-z]?\s+(?:[A-Z][A-Za-z'\-]*\s+){1,4}"
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Way|Terrace|"
    r"Strasse|Straße|Rue|Calle|Via)\b\.?"
)
_HONORIFIC_NAME = re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.?\s+[A-Z][a-z'\-]+(?:\s+[A-Z][a-z'\-]+)?")
# A phone number in text is found only in international form (+ and country code): a bare run of
# digits is as likely an order number.
_PHONE_MIN_DIGITS = 7


def normalized_key(key: str) -> str:
    return re.sub(r"[\s_\-]", "", key).lower()


def kinds_of_key(key: str) -> set[str]:
    """The kinds of personal data a key names (`first_name` → name, `zip` → address)."""
    normal = normalized_key(key)
    kinds = set()
    if normal in NAME_KEYS:
        kinds.add(PiiKind.NAME)
    if normal in ADDRESS_KEYS:
        kinds.add(PiiKind.ADDRESS)
    return kinds


def is_phone_key(key: str) -> bool:
    return normalized_key(key) in PHONE_KEYS


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a string of digits (card numbers, 13 to 19 digits, pass it)."""
    if not digits.isdigit():
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        digit = int(char)
        if index % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def is_card_number(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def is_email(candidate: str) -> bool:
    try:
        validate_email(candidate, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def is_ip(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Finding:
    """Personal data found in a text: where, and what kind."""

    start: int
    end: int
    kind: str


def find_in_text(text: str, *, phone_key: bool = False) -> list[Finding]:
    """Every piece of personal data in `text` a value detector recognises, without overlaps
    (the first found wins: emails, cards, IPs, phones, street addresses, names). With
    `phone_key` (the value's key names a phone), a value of at least 7 digits is a phone in
    whatever format."""
    findings: list[Finding] = []

    def free(start: int, end: int) -> bool:
        return all(end <= f.start or start >= f.end for f in findings)

    def add(start: int, end: int, kind: str) -> None:
        if free(start, end):
            findings.append(Finding(start, end, kind))

    for match in _EMAIL_CANDIDATE.finditer(text):
        if is_email(match.group()):
            add(match.start(), match.end(), PiiKind.EMAIL)
    for match in _CARD_CANDIDATE.finditer(text):
        if is_card_number(re.sub(r"\D", "", match.group())):
            add(match.start(), match.end(), PiiKind.CARD)
    for match in _IPV4_CANDIDATE.finditer(text):
        if is_ip(match.group()):
            add(match.start(), match.end(), PiiKind.IP)
    for match in _IPV6_CANDIDATE.finditer(text):
        candidate = match.group()
        digits = sum(char != ":" for char in candidate)
        if (
            ("::" in candidate or candidate.count(":") == 7)
            and digits >= _IPV6_MIN_HEX_DIGITS
            and is_ip(candidate)
        ):
            add(match.start(), match.end(), PiiKind.IP)
    if "+" in text:
        for phone in phonenumbers.PhoneNumberMatcher(text, None):
            if phonenumbers.is_valid_number(phone.number):
                add(phone.start, phone.end, PiiKind.PHONE)
    if phone_key and sum(char.isdigit() for char in text) >= _PHONE_MIN_DIGITS:
        stripped = text.strip()
        add(text.index(stripped) if stripped else 0, len(text.rstrip()), PiiKind.PHONE)
    for match in _STREET_ADDRESS.finditer(text):
        add(match.start(), match.end(), PiiKind.ADDRESS)
    for match in _HONORIFIC_NAME.finditer(text):
        add(match.start(), match.end(), PiiKind.NAME)
    return sorted(findings, key=lambda f: f.start)


def mask_email(address: str) -> str:
    """`jane.doe@example.com` → `j***@example.com`: the domain stays, the person goes."""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}***@{domain}"


def placeholder(kind: str) -> str:
    return f"[REDACTED:{kind}]"


def redact_text(text: str, findings: Iterable[Finding]) -> str:
    """`text` with each finding replaced: emails masked, the others by `[REDACTED:<kind>]`."""
    parts, position = [], 0
    for finding in findings:
        parts.append(text[position : finding.start])
        found = text[finding.start : finding.end]
        parts.append(mask_email(found) if finding.kind == PiiKind.EMAIL else placeholder(finding.kind))
        position = finding.end
    parts.append(text[position:])
    return "".join(parts)


def number_kinds(value: float | int) -> set[str]:
    """A JSON number that is a card number (13 to 19 digits passing the Luhn check)."""
    if isinstance(value, bool) or not float(value).is_integer() or value < 0:
        return set()
    return {PiiKind.CARD} if is_card_number(str(int(value))) else set()
