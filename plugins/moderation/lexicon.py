"""The game-and-stream-chat lexicon: categories, phrases and weights, written for Banterbox. Data.

Generic profanity models miss most of what makes game chat toxic, so this lexicon covers what
they miss: taunting, telling someone to uninstall or kill themselves, skill insults, family
insults and harassment without a swear word. Phrases are folded like messages (folding.py), so
"k.y.s", "kyyys" and "kys" are one entry; `*` is a wildcard inside a word. A "targeted" entry
is an insult only when aimed at someone (you, ur, @name...): "this boss is trash" is not
"you are trash", so untargeted it counts `UNTARGETED_FACTOR` of its weight.
"""

from __future__ import annotations

from dataclasses import dataclass

CATEGORIES = (
    "profanity", "hate", "sexual", "self_harm", "family", "insult", "taunt", "harassment",
)  # fmt: skip
UNTARGETED_FACTOR = 0.4
# Words that aim a message at a person; folded, so "you" covers "yoouu" and "y0u".
TARGETS = frozenset(
    {"you", "u", "ur", "your", "youre", "yours", "yourself", "urself", "ya", "yo", "thou",
     "streamer", "strimer", "mods", "chat", "bro", "dude", "ure"}
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Entry:
    phrase: str
    category: str
    weight: float  # the category score this phrase alone gives, in [0, 1]
    targeted: bool = False


def _entries(category: str, weight: float, phrases: str, *, targeted: bool = False) -> list[Entry]:
    return [
        Entry(phrase=p.strip(), category=category, weight=weight, targeted=targeted)
        for p in phrases.split(",")
        if p.strip()
    ]


ENTRIES: tuple[Entry, ...] = (
    *_entries(
        "self_harm",
        0.95,
        """kys, kill yourself, kill urself, kill ur self, kill yourselves,
        neck yourself, neck urself, hang yourself, hang urself, unalive yourself, unalive urself,
        end yourself, end urself, end your life, off yourself, rope yourself, drink bleach,
        jump off a bridge, go die, pls die, please die, just die, hope you die, hope u die,
        you should die, u should die, die irl, kill your self, go kill yourself, commit die,
        nobody would miss you, world is better without you""",
    ),
    *_entries(
        "self_harm",
        0.8,
        """uninstall, uninstall the game, uninstall pls, delete the game,
        delete your account, quit the game, quit forever, go uninstall, alt f4 your life,
        never play again, retire from gaming""",
    ),
    *_entries(
        "hate",
        0.95,
        """faggot, fag, fags, nigger, nigga, niggers, retard, retarded,
        tranny, trannies, kike, chink, spic, wetback, gook, towelhead, raghead, dyke, shemale,
        subhuman, go back to your country, women belong in the kitchen,
        get back in the kitchen, gas the, white power, sieg heil, heil hitler, 1488, 14 88,
        autist, autistic retard, mongoloid""",
    ),
    *_entries(
        "sexual",
        0.85,
        """send nudes, show feet, show your feet, show tits, show boobs,
        nudes, tits, boobs, dick pic, suck my dick, blowjob, porn, pornhub, onlyfans, horny,
        cum, cumming, rape, raped, rapist, sit on my face, thot, e thot, whore, slut,
        sexy body, take it off, flash us""",
    ),
    *_entries(
        "family",
        0.85,
        """your mom, ur mom, your mum, ur mum, your mother, ur mother,
        yo mama, yo momma, yo mamma, your momma, your dad left, ur dad left, your father left,
        dad left you, your dad never came back, your family hates you, your whole family,
        orphan, go cry to your mom, mommy issues, daddy issues, born by accident,
        your parents regret, mistake of your parents""",
    ),
    # Insults that need no target: a bare "moron" in chat is aimed at someone.
    *_entries(
        "insult",
        0.8,
        """loser, moron, idiot, dumbass, imbecile, scrub, dogwater,
        dog water, hardstuck, bronze brain, 0 iq, room temperature iq, smooth brain, braindead,
        brain dead, worst player, worst streamer, no hands, zero skill, no skill, potato aim,
        aim like a potato, bitch, bitches, dickhead, asshole, cunt, twat, wanker, prick, fatass,
        jackass, dipshit, douchebag, incel, virgin, simp, neckbeard, basement dweller,
        waste of space, waste of oxygen, touch grass, get a life, no life, no friends,
        my grandma plays better, my dog plays better, a bot plays better, play like a bot,
        you play like a bot, uninstall noob, delete noob""",
    ),
    # Words that insult only when aimed: "this boss is trash" is not "you are trash".
    *_entries(
        "insult",
        0.75,
        """trash, garbage, dogshit, bot, bots, noob, noobs, newb, useless,
        worthless, dumb, stupid, bad, so bad, terrible, awful, inting, feeder, thrower, griefer,
        boosted, washed, washed up, clueless, pathetic, ugly, fat, cringe, npc, ape, monkey,
        donkey, muppet, clown, sweaty, tryhard, carried, suck, sucks, no brain""",
        targeted=True,
    ),
    *_entries(
        "taunt",
        0.8,
        """get rekt, get wrecked, cry more, cry about it, stay mad,
        seethe, cope harder, mald harder, l bozo, ratio bozo, stay losing, imagine losing,
        imagine being this bad, mad cuz bad, mad because bad, keep crying, get clapped,
        sit down kid, take the l, hold this l, hold that l, gg ez, ggez, gg no re,
        ez game ez life, easiest win, thanks for the free win, you got owned, get owned,
        owned kid, cry baby, crybaby, tears of a loser, skill issue, git gud, l2p""",
    ),
    *_entries(
        "taunt",
        0.7,
        """ez, ez clap, too easy, free win, get good, back to the tutorial,
        go back to tutorial, tutorial island, rekt, sit down, sit dog, cope, mald, malding,
        ratio, bozo, cry, crying, tears, salty, owned, destroyed, clapped, one tapped,
        you lost, u lost, easy, stay bad, lol bad""",
        targeted=True,
    ),
    *_entries(
        "harassment",
        0.85,
        """nobody likes you, no one likes you, everyone hates you,
        we all hate you, nobody asked, no one asked, stfu, shut the fuck up, shut your mouth,
        i know where you live, i will find you, im going to find you, watch your back,
        i will hurt you, i'll kill you, i will kill you, gonna kill you, kill you irl, dox,
        doxx, swat, swatted, your address, your ip, this stream sucks, stream sucks,
        worst stream, boring stream, unfollowed, never stream again, quit streaming,
        stop streaming, fuck you, fuck u, fuck off, screw you, f you, f off, go to hell,
        piss off, eat shit, suck my, piece of shit, kiss my ass, up yours""",
    ),
    *_entries(
        "harassment",
        0.85,
        """shut up, who asked, go away, get out, leave the stream,
        leave chat, nobody cares, no one cares, annoying, so annoying, kick this guy,
        ban this guy, go outside, boring, a joke""",
        targeted=True,
    ),
    *_entries(
        "profanity",
        0.8,
        """fuck, fucking, fucker, fuckin, motherfucker, fck, fk, fuk,
        shit, shitty, bullshit, bitch, son of a bitch, ass, dick, cock, cocksucker, douche,
        gtfo, *fuck*, *shit*, *bitch*, *cunt*""",
        targeted=True,
    ),
    *_entries("profanity", 0.4, "damn, goddamn, crap, wtf, fml, bs, hell, omfg"),
)
