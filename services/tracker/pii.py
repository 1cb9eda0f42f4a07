"""Likely personal data in event payloads: what kind a key or value looks like, and the same text
with it redacted. Pure functions, no I/O.

Values are recognised by what they are (an email address that email-validator accepts, a phone
number that libphonenumber finds valid, an IPv4 or IPv6 address, a 13 to 19 digit card number that
passes the Luhn check, a street address or an honorific and a name), also inside free text;
names and postal addresses also by their key (`first_name`, `street`, `zip`, ...).
"""

from __future__ import annotations

import functools
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
# The part before the @ of a candidate that email-validator accepts: its characters are all
# `atext` (RFC 5322), so only the dots can make it invalid (dot-atom: no leading, trailing or
# double dot). Its length counts only in the address's (EMAIL_MAX_LENGTH).
_EMAIL_LOCAL_PART = re.compile(r"[^.]+(?:\.[^.]+)*")
EMAIL_MAX_LENGTH = 254
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
# What a text must contain for _HONORIFIC_NAME to match in it (Mrs contains Mr).
_HONORIFIC = re.compile(r"Mr|Ms|Miss|Mx|Dr|Prof")
_DIGIT = re.compile(r"\d")
# A phone number in text is found only in international form (+ and country code): a bare run of
# digits is as likely an order number.
_PHONE_MIN_DIGITS = 7


# Keys repeat from one event to the next: what they name is remembered (a bounded cache, in
# memory only).
KEY_CACHE_SIZE = 4096
_KEY_SEPARATORS = re.compile(r"[\s_\-]")


def normalized_key(key: str) -> str:
    return _KEY_SEPARATORS.sub("", key).lower()


@functools.lru_cache(maxsize=KEY_CACHE_SIZE)
def kinds_of_key(key: str) -> frozenset[str]:
    """The kinds of personal data a key names (`first_name` → name, `zip` → address)."""
    normal = normalized_key(key)
    kinds = set()
    if normal in NAME_KEYS:
        kinds.add(PiiKind.NAME)
    if normal in ADDRESS_KEYS:
        kinds.add(PiiKind.ADDRESS)
    return frozenset(kinds)


@functools.lru_cache(maxsize=KEY_CACHE_SIZE)
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
    """Whether email-validator accepts `candidate` (syntax only, no DNS)."""
    try:
        validate_email(candidate, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


@functools.lru_cache(maxsize=KEY_CACHE_SIZE)
def _domain_length(domain: str) -> int | None:
    """The longest form of a domain email-validator accepts (as given, normalized, IDNA ASCII;
    in UTF-8 bytes, as it counts an address's length), None when it does not accept it."""
    try:
        valid = validate_email("a@" + domain, check_deliverability=False)
    except EmailNotValidError:
        return None
    return max(len(form.encode()) for form in (domain, valid.domain, valid.ascii_domain or domain))


def is_email_candidate(candidate: str) -> bool:
    """`is_email` of an _EMAIL_CANDIDATE match, with the domain's validation cached: email-validator
    checks the part before the @ (a dot-atom: see _EMAIL_LOCAL_PART) and the domain each on its own,
    then the whole address's length; the domain (most of the cost) repeats across addresses."""
    local, _, domain = candidate.rpartition("@")
    domain_length = _domain_length(domain)
    return (
        domain_length is not None
        and _EMAIL_LOCAL_PART.fullmatch(local) is not None
        and len(local) + 1 + domain_length <= EMAIL_MAX_LENGTH
    )


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
    whatever format.

    A detector runs only on a text that has what it needs to match (an `@`, a digit, dots or
    colons, an honorific): most values have none of these, and skip the regular expressions."""
    findings: list[Finding] = []

    def free(start: int, end: int) -> bool:
        return all(end <= f.start or start >= f.end for f in findings)

    def add(start: int, end: int, kind: str) -> None:
        if free(start, end):
            findings.append(Finding(start, end, kind))

    if "@" in text:
        for match in _EMAIL_CANDIDATE.finditer(text):
            if is_email_candidate(match.group()):
                add(match.start(), match.end(), PiiKind.EMAIL)
    # Cards, IPv4 addresses, phones and street addresses all have digits.
    has_digit = _DIGIT.search(text) is not None
    if has_digit:
        for match in _CARD_CANDIDATE.finditer(text):
            if is_card_number(re.sub(r"\D", "", match.group())):
                add(match.start(), match.end(), PiiKind.CARD)
        if text.count(".") >= 3:
            for match in _IPV4_CANDIDATE.finditer(text):
                if is_ip(match.group()):
                    add(match.start(), match.end(), PiiKind.IP)
    if text.count(":") >= 2:
        for match in _IPV6_CANDIDATE.finditer(text):
            candidate = match.group()
            digits = sum(char != ":" for char in candidate)
            if (
                ("::" in candidate or candidate.count(":") == 7)
                and digits >= _IPV6_MIN_HEX_DIGITS
                and is_ip(candidate)
            ):
                add(match.start(), match.end(), PiiKind.IP)
    if has_digit and "+" in text:
        for phone in phonenumbers.PhoneNumberMatcher(text, None):
            if phonenumbers.is_valid_number(phone.number):
                add(phone.start, phone.end, PiiKind.PHONE)
    if phone_key and sum(char.isdigit() for char in text) >= _PHONE_MIN_DIGITS:
        stripped = text.strip()
        add(text.index(stripped) if stripped else 0, len(text.rstrip()), PiiKind.PHONE)
    if has_digit:
        for match in _STREET_ADDRESS.finditer(text):
            add(match.start(), match.end(), PiiKind.ADDRESS)
    if _HONORIFIC.search(text) is not None:
        for match in _HONORIFIC_NAME.finditer(text):
            add(match.start(), match.end(), PiiKind.NAME)
    return sorted(findings, key=lambda f: f.start)


@functools.lru_cache(maxsize=KEY_CACHE_SIZE)
def redact_key(key: str) -> str:
    """A key with the personal data in it redacted (`{"jane@x.io": 1}` → `j***@x.io`)."""
    return redact_text(key, find_in_text(key))


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
