"""The key is masked in every shape it could come back in."""
from __future__ import annotations

import logging
from urllib.parse import quote, quote_plus

import pytest

from ledger.redact import RedactingFilter, key_forms, mask_key, redact

KEY = "sora-Tq3v9Zk2LmN8pR4sW6yB1cD5fG7hJ0xA"
BARE = KEY[len("sora-"):]
# A key with characters that URL encoding changes, to tell quote() from quote_plus().
ODD_KEY = "sora-ab+c/d=ef gh&ij~kl"


@pytest.mark.parametrize("shown", [
    KEY,
    BARE,
    quote(KEY, safe=""),
    quote_plus(BARE),
    f"Authorization: Bearer {KEY}",
    f"authorization: bearer {BARE}",
])
def test_every_form_of_the_key_is_masked(shown: str) -> None:
    text = redact(f"the server said: <{shown}> end", [KEY])
    assert BARE not in text and "Tq3v9Zk2" not in text
    assert text.startswith("the server said: <") and text.endswith("> end")


@pytest.mark.parametrize("encode", [
    lambda k: k,
    lambda k: k[len("sora-"):],
    lambda k: quote(k),
    lambda k: quote(k, safe=""),
    lambda k: quote(k, safe="").lower(),  # percent-escapes in lower-case hex
    lambda k: quote_plus(k),
    lambda k: quote_plus(k[len("sora-"):]),
])
def test_url_encoded_forms_of_a_key_with_odd_characters_are_masked(encode) -> None:
    shown = encode(ODD_KEY)
    text = redact(f"GET /v1/balance?key={shown}&x=1", [ODD_KEY])
    assert shown not in text
    assert text.startswith("GET /v1/balance?key=") and text.endswith("&x=1")
    assert mask_key(ODD_KEY) in text


def test_the_mask_keeps_only_the_prefix_and_the_last_four_characters() -> None:
    assert redact(f"key {BARE}!", [KEY]) == "key sora-…J0xA!"
    assert redact(quote_plus(KEY), [KEY]) == "sora-…J0xA"


def test_short_forms_that_could_be_ordinary_words_are_left_alone() -> None:
    # "sora-abc" without its prefix is "abc": masking every "abc" would garble text for nothing.
    assert key_forms("sora-abc") == ["sora-abc"]
    assert redact("abc is fine, sora-abc is not", ["sora-abc"]) == "abc is fine, … is not"


def test_text_without_the_key_is_unchanged() -> None:
    text = "GET /tasks/123: HTTP 502 (non-JSON body: '<html>…</html>')"
    assert redact(text, [KEY]) == text


def test_log_records_and_their_exceptions_are_masked() -> None:
    record = logging.LogRecord("ledger.x", logging.ERROR, __file__, 1, "answer %s", (f"echo {BARE}",),
                               (ValueError, ValueError(quote(KEY, safe="")), None))
    RedactingFilter([KEY]).filter(record)
    assert BARE not in record.getMessage()
    assert record.exc_info is not None and BARE not in str(record.exc_info[1])
