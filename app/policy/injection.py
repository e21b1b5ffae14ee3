"""Known prompt-injection patterns in untrusted data (tool outputs, retrieved memories), and
the neutralising of delimiter-escape attempts before such data is wrapped.

`scan` is a tripwire, not a guarantee: it flags the well-known phrasings so they are
audited and, per the agent's `untrusted_content` setting, gate later write calls;
paraphrases get through. It matches case-insensitively, after JSON `\\u` escapes are read
and Unicode is compatibility-folded (fullwidth letters, invisible characters), with
precompiled patterns each run only when one of its keywords occurs. The structural
defence is `wrap_untrusted`: data can never close its `<untrusted-data>` wrapper.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass

DELIMITER = "untrusted-data"
MAX_SCANNED_CHARS = 200_000
_EXCERPT_CHARS = 80

# A line start, also inside JSON text where a newline is the two characters `\n`.
_LINE = r"(?:^|\n|\\n|\\r)[ \t>*#-]*"
_GAP = r"[^.!?\n]{0,40}?"  # a few words within the same sentence

_PATTERNS: dict[str, str] = {
    "ignore_instructions": (
        r"\b(?:ignore|disregard|forget|skip|bypass|override|drop)\b\W+(?:all\W+|any\W+|the\W+"
        r"|your\W+|of\W+|my\W+|these\W+|those\W+)*(?:previous|prior|above|earlier|preceding"
        r"|original|initial|system|existing|old|current)\W+(?:\w+\W+)?(?:instructions?"
        r"|prompts?|directions?|directives?|rules|guidelines|guardrails|context|commands?"
        r"|constraints|programming|policies)\b"
    ),
    "forget_everything": (
        r"\b(?:forget|disregard|ignore)\s+(?:everything|all\s+(?:of\s+)?(?:that|this|the\s+above))"
        r"\s+(?:you|i|we|that|above|before|previously|so\s+far|said|were)"
    ),
    "new_instructions": (
        r"\b(?:new|updated|revised|real|actual|true|hidden|secret)\s+(?:system\s+)?"
        r"instructions?\s*(?:for\s+(?:the\s+)?(?:ai|assistant|agent|model|llm|bot)\w*\s*)?[:\-\u2013\u2014]"
    ),
    "role_reassignment": (
        r"\byou\s+are\s+(?:now|no\s+longer)\s+(?:an?\s+|the\s+|my\s+)?(?:\w+\s+)?(?:ai|assistant"
        r"|model|chatbot|bot|dan|hacker|admin|administrator|unrestricted|unfiltered|uncensored"
        r"|jailbroken|free\s+(?:from|of)|in\s+(?:developer|admin|god|debug|dan)\s+mode|bound"
        r"|restricted|limited|required\s+to\s+follow)\b"
        r"|\bfrom\s+now\s+on,?\s+you(?:\s+are|\s+will|\s+must|\s+shall|'ll|'re)?\s+(?:only\s+)?"
        r"(?:act|respond|answer|behave|ignore|obey|follow|pretend|reply|be\s+(?:an?|my)\s)"
        r"|\byou\s+(?:must|will|shall)\s+now\s+(?:act|behave|respond|ignore|obey)"
        r"|\bpretend\s+(?:to\s+be|that\s+you\s+are|you\s+are)\b"
        r"|\bact\s+as\s+(?:if\s+you\s+(?:are|were)\s+)?(?:an?\s+)?(?:unrestricted|unfiltered"
        r"|jailbroken|uncensored|evil|rogue|root|dan\b)"
        r"|\broleplay\s+as\b|\byou\s+have\s+been\s+(?:freed|jailbroken|unlocked|reprogrammed)\b"
    ),
    "jailbreak_mode": (
        r"\b(?:developer|god|jailbreak|dan|sudo|unrestricted)\s+mode\b|\bdo\s+anything\s+now\b"
        r"|\bjailbr(?:eak|oken)\b"
    ),
    "system_prompt": (
        r"\b(?:system|developer|hidden)\s+prompt\s*(?:override|update|injection|:)"
        r"|\b(?:reveal|print|repeat|output|leak|dump|expose|tell\s+me|share|show|disclose)\s+"
        r"(?:me\s+|us\s+)?(?:your|the)\s+(?:full\s+|entire\s+|exact\s+|complete\s+)?"
        r"(?:system\s+prompt|hidden\s+prompt|initial\s+prompt|system\s+message"
        r"|(?:original|initial|hidden|secret)\s+instructions)\b"
        r"|\b(?:reveal|print|leak|dump|expose|disclose|paste|output)\s+(?:me\s+|us\s+)?(?:your|the)"
        r"\s+(?:api\s*keys?|secret\s+keys?|credentials|passwords?|access\s+tokens?)\b"
        r"|\b(?:reveal|print|repeat|output|dump|disclose)\s+your\s+(?:instructions|rules"
        r"|guidelines|prompt)\b"
        r"|\b(?:system|admin|security|emergency)\s+override\b"
    ),
    "addressed_to_model": (
        r"\b(?:note|message|instructions?|attention|notice|reminder)\s+(?:to|for)\s+"
        r"(?:the\s+|any\s+)?(?:ai|assistant|model|llm|chatbot|language\s+model)s?\b"
        r"|\b(?:dear|hey|attention)\s+(?:ai|assistant|llm|chatbot|language\s+model)\b"
        r"|\bif\s+you\s+are\s+an?\s+(?:ai|assistant|llm|language\s+model|bot)\b"
        r"|\b(?:ai|llm)\s+(?:assistant|agent|model)s?\s+(?:reading|processing|summari[sz]ing)\b"
        r"|\bas\s+an\s+ai\s+(?:assistant|agent|model|language\s+model)\s*,?\s+you\b"
    ),
    "priority_claim": (
        r"\b(?:these|this|the\s+following)\s+instructions?\s+(?:take|takes|have|has)\s+"
        r"(?:priority|precedence)|\b(?:supersede|supersedes|override|overrides)\s+(?:all\s+)?"
        r"(?:other|previous|prior|your)\s+(?:instructions|rules|guidelines)"
    ),
    "exfiltration": (
        r"\b(?:send|post|upload|forward|transmit|exfiltrate|leak|email|e-mail|copy|submit)\b"
        + _GAP
        + r"\b(?:conversation|chat\s+history|system\s+prompt|instructions|api[\s_-]*keys?"
        r"|credentials|passwords?|secrets?|tokens?|session\s+data|customer\s+(?:data|records|list)"
        r"|all\s+(?:the\s+)?(?:data|records|user\s+data|emails)|context|memory|previous\s+messages)"
        r"\b" + _GAP + r"\b(?:to|at|into)\s+(?:https?://|www\.|ftp://|[\w.+-]+@[\w-]+\.\w)"
        r"|\bexfiltrat\w*"
        r"|!\[[^\]\n]{0,100}\]\(\s*https?://[^)\s]{0,200}\?[^)\s]{0,200}="
        r"\s*(?:\{|\[|%7b|<|\$)"
    ),
    "tool_call_text": (
        r"<\s*/?\s*(?:tool_use|tool_call|tool_calls|function_calls?|invoke|antml:\w+|tool_result)"
        r"\b|\"type\"\s*:\s*\"tool_use\"|\"(?:function_call|tool_calls)\"\s*:\s*[\[{]"
        r"|\b(?:call|invoke|execute|trigger|run)\s+(?:the\s+)?[`'\"]?[a-z]+_[a-z0-9_]+[`'\"]?"
        r"\s+(?:tool|function)\s+(?:with|now|immediately|using)\b"
        r"|\b(?:immediately|now)\s+(?:call|invoke|use)\s+(?:the\s+)?[`'\"]?[a-z]+_[a-z0-9_]+"
    ),
    "delimiter_escape": (
        r"(?:<|\uff1c|\ufe64|\\u003c|&lt;)\s*/?\s*untrusted[\s_-]*data"
        r"|<\s*/?\s*(?:system|instructions?|tool_output|assistant|human)\s*>"
        r"|<\|(?:im_start|im_end|system|endoftext|user|assistant)\|>|\[/?inst\]|<<\s*/?sys\s*>>"
        r"|\b(?:end|close)\s+of\s+(?:the\s+)?(?:untrusted\s+)?(?:data|tool\s+output|document"
        r"|context|input)\b\s*[\]\-=#>*]{2,}"
    ),
    "role_marker": (
        _LINE + r"(?:human|assistant)\s*:"
        r"|" + _LINE + r"(?:system|ai|user)\s*:\s*(?=[^\n]{0,40}?\b(?:ignore|override|disregard"
        r"|new\s+instructions?|you\s+(?:must|are\s+now|will\s+now)|sure,?\s+i|okay,?\s+i"
        r"|understood|i\s+will\s+now|i'll\s+now|as\s+requested)\b)"
        r"|" + _LINE + r"#{2,}\s*(?:system|instructions?|new\s+instructions?|assistant|human"
        r"|user\s+prompt|admin)\b"
    ),
    "decode_and_follow": (
        r"\b(?:decode|base64[\s-]*decode|rot13|deobfuscate)\b[^.\n]{0,40}\b(?:and|then)\s+"
        r"(?:follow|execute|run|obey|do|perform|carry\s+out)\b"
    ),
}

# Every match of a pattern contains (lowercased) one of its keywords: a pattern whose
# keywords are all absent is not run. Substring search is far cheaper than the regexes.
_KEYWORDS: dict[str, tuple[str, ...]] = {
    "ignore_instructions": ("ignore", "disregard", "forget", "skip", "bypass", "override", "drop"),
    "forget_everything": ("forget", "disregard", "ignore"),
    "new_instructions": ("instruction",),
    "role_reassignment": ("you", "pretend", "act", "roleplay"),
    "jailbreak_mode": ("mode", "anything", "jailbr"),
    "system_prompt": (
        "prompt", "message", "instruction", "key", "credential", "password", "token", "rules",
        "guideline", "override",
    ),
    "addressed_to_model": ("ai", "assistant", "model", "llm", "bot"),
    "priority_claim": ("instruction", "supersede", "override"),
    "exfiltration": ("http", "www.", "ftp:", "@", "exfiltrat"),
    "tool_call_text": ("<", "tool", "function", "immediately", "now"),
    "delimiter_escape": ("<", "&lt;", "\\u003c", "inst]", "end", "close"),
    "role_marker": ("human", "assistant", "system", "ai", "user", "##"),
    "decode_and_follow": ("decode", "rot13", "deobfuscate"),
}  # fmt: skip
# Patterns are written in lower case and run on lower-cased text: re.IGNORECASE makes
# Python's matcher about twice as slow.
_COMPILED = tuple(
    (name, re.compile(pattern, re.MULTILINE), _KEYWORDS[name])
    for name, pattern in _PATTERNS.items()
)
_ALL_KEYWORDS = frozenset(keyword for keywords in _KEYWORDS.values() for keyword in keywords)
# Letters that case-insensitive matching treats as ASCII but NFKC leaves alone.
_CONFUSABLES = str.maketrans({"\u0131": "i", "\u0130": "I"})
_JSON_ESCAPES = re.compile(r"(?:\\u[0-9a-fA-F]{4})+")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")
# Unicode tag characters hide ASCII from human readers ("ASCII smuggling"); several
# zero-width characters in a row hide words.
_HIDDEN = re.compile("[\U000e0000-\U000e007f]|[\u200b\u200c\u2060\ufeff\u2062-\u2064]{3,}")
_INVISIBLE = re.compile("[\u200b-\u200d\u2060\ufeff\u00ad\U000e0000-\U000e007f]")
_DELIMITER_TAG = re.compile(
    r"(?:<|\uff1c|\ufe64|\\u003c|\\x3c|\\uff1c|\\ufe64)(\s*/?\s*)untrusted"
    r"[\s_\-\u200b-\u200d\u2060\ufeff\u00ad\u2010-\u2015]*data",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class InjectionFlag:
    """One suspicious passage: which pattern, where (offset in the text as scanned, after
    Unicode folding) and an excerpt for the audit log."""

    pattern: str
    position: int
    excerpt: str


def scan(text: str) -> list[InjectionFlag]:
    """Flags for the known injection patterns in `text` (its first MAX_SCANNED_CHARS
    characters), at most one per pattern; empty when none matched."""
    return _scan(text, prefilter=True)


def _scan(text: str, *, prefilter: bool) -> list[InjectionFlag]:
    unescaped = _unescape_json(text[:MAX_SCANNED_CHARS])
    flags = []
    hidden = None if unescaped.isascii() else _HIDDEN.search(unescaped)
    if hidden is not None:
        flags.append(InjectionFlag("hidden_text", hidden.start(), _excerpt(unescaped, hidden)))
    folded = _fold(unescaped)
    lowered = folded.lower()
    # Each keyword looked for once (patterns share many), not once per pattern.
    present = {keyword for keyword in _ALL_KEYWORDS if keyword in lowered} if prefilter else None
    for name, regex, keywords in _COMPILED:
        if present is not None and present.isdisjoint(keywords):
            continue
        match = regex.search(lowered)
        if match is not None:
            flags.append(InjectionFlag(name, match.start(), _excerpt(folded, match)))
    encoded = _encoded_instructions(folded)
    if encoded is not None:
        flags.append(encoded)
    return flags


def neutralise_delimiters(text: str) -> str:
    """`text` with every tag-like `untrusted-data` (either bracket, any case, fullwidth or
    escaped brackets, separators or invisible characters inside) turned into an inert
    `&lt;untrusted-data` / `&lt;/untrusted-data`, so it can neither close the wrapper
    early nor open a fake one. Idempotent; other text is left as it is."""
    return _DELIMITER_TAG.sub(
        lambda match: "&lt;" + ("/" if "/" in match.group(1) else "") + DELIMITER, text
    )


def wrap_untrusted(text: str, source: str) -> str:
    """`text` as untrusted data for the model: neutralised, inside the delimiters."""
    attribute = source.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return f'<{DELIMITER} source="{attribute}">\n{neutralise_delimiters(text)}\n</{DELIMITER}>'


def _unescape_json(text: str) -> str:
    """JSON `\\uXXXX` escapes (JSON text from a tool or an API may spell any character so)
    as the characters a model reads them as."""
    if "\\u" not in text:
        return text
    return _JSON_ESCAPES.sub(_unescaped, text)


def _unescaped(match: re.Match[str]) -> str:
    utf16 = b"".join(
        int(escape, 16).to_bytes(2, "big") for escape in match.group().split("\\u")[1:]
    )
    return utf16.decode("utf-16-be", errors="replace")


def _fold(text: str) -> str:
    """Compatibility-folded (fullwidth and styled letters to ASCII), invisible characters
    removed: what a model reads, not what a naive byte match sees. Lower-casing it keeps
    every offset (the one letter whose lower case is longer, U+0130, is mapped first)."""
    if text.isascii():
        return text
    return _INVISIBLE.sub("", unicodedata.normalize("NFKC", text)).translate(_CONFUSABLES)


def _encoded_instructions(text: str) -> InjectionFlag | None:
    """A base64 blob that decodes to readable text which itself scans as an injection."""
    for match in _BASE64_RUN.finditer(text):
        blob = match.group()
        try:
            decoded = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        plain = decoded.decode("utf-8", errors="replace")
        printable = sum(char.isprintable() or char.isspace() for char in plain)
        if printable < 0.95 * max(1, len(plain)):
            continue
        if any(regex.search(plain.lower()) for _, regex, _ in _COMPILED):
            return InjectionFlag("encoded_payload", match.start(), _excerpt(text, match))
    return None


def _excerpt(text: str, match: re.Match[str]) -> str:
    start = max(0, match.start() - 10)
    excerpt = text[start : start + _EXCERPT_CHARS]
    return excerpt.replace("\n", " ")
