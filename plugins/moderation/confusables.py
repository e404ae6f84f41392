"""Look-alike characters that NFKC leaves alone, mapped to the ASCII letter they imitate. Data only.

Written here from the Unicode confusables that chat evaders use most: Cyrillic and Greek
letters, small capitals, and a few symbols. NFKC already folds fullwidth, mathematical,
circled and superscript letters, so they are not listed.
"""

from __future__ import annotations

from types import MappingProxyType

_PAIRS = {
    # Cyrillic
    "а": "a", "в": "b", "с": "c", "ԁ": "d", "е": "e", "ё": "e", "һ": "h", "і": "i", "ї": "i",
    "ј": "j", "к": "k", "ӏ": "l", "м": "m", "н": "h", "о": "o", "р": "p", "ԛ": "q", "г": "r",
    "ѕ": "s", "т": "t", "у": "y", "ү": "y", "х": "x", "ԝ": "w", "ь": "b", "п": "n", "и": "u",
    "з": "3", "ч": "4", "д": "a", "л": "n", "ц": "u", "ш": "w", "щ": "w", "я": "r",
    # Greek
    "α": "a", "β": "b", "γ": "y", "δ": "d", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v",
    "ο": "o", "ρ": "p", "σ": "o", "ς": "s", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "μ": "u",
    # small capitals and other Latin look-alikes
    "ᴀ": "a", "ʙ": "b", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ғ": "f", "ɢ": "g", "ʜ": "h", "ɪ": "i",
    "ᴊ": "j", "ᴋ": "k", "ʟ": "l", "ᴍ": "m", "ɴ": "n", "ᴏ": "o", "ᴘ": "p", "ʀ": "r", "ꜱ": "s",
    "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ʏ": "y", "ᴢ": "z", "ı": "i", "ȷ": "j", "ɑ": "a",
    "ɡ": "g", "ɩ": "i", "ø": "o", "đ": "d", "ħ": "h", "ł": "l", "ŧ": "t", "ß": "ss",
    "æ": "ae", "œ": "oe", "ð": "d", "þ": "p",
    # symbols used as letters
    "€": "e", "£": "l", "¥": "y", "©": "c", "®": "r", "∪": "u", "∩": "n",
}  # fmt: skip

CONFUSABLES = MappingProxyType(_PAIRS)
