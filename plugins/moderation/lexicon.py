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
     "streamer", "strimer", "mods", "chat", "bro", "dude", "he", "she", "his", "her", "ure"}
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
        autist, autistic retard, mongoloid, sand n*""",
    ),
    *_entries(
        "sexual",
        0.85,
        """send nudes, show feet, show your feet, show tits, show boobs,
        nudes, tits, boobs, dick pic, suck my dick, suck my d, blowjob, porn, pornhub, onlyfans,
        horny, cum, cumming, rape, raped, rapist, sit on my face, thot, e thot, whore, slut,
        sexy body, take it off, flash us""",
    ),
    *_entries(
        "family",
        0.85,
        """your mom, ur mom, your mum, ur mum, your mother, ur mother,
        yo mama, yo momma, yo mamma, your momma, your dad left, ur dad left, your father left,
        dad left you, your dad never came back, your family hates you, your sister,
        your whole family, orphan, go cry to your mom, mommy issues, daddy issues, your grandma,
        ur grandma, adopted, born by accident, your parents regret, mistake of your parents""",
    ),
    *_entries(
        "insult",
        0.75,
        """trash, garbage, dogshit, dog water, dogwater, bot, bots,
        noob, noobs, newb, scrub, braindead, brain dead, no brain, hardstuck, bronze brain,
        boosted, washed, washed up, useless, worthless, clown, clueless, dumb, dumbass, stupid,
        idiot, moron, loser, pathetic, bad at this game, bad at the game, so bad, terrible,
        awful, inting, int, feeder, feeding, throwing, thrower, griefer, potato aim,
        aim like a potato, cant aim, can't aim, zero skill, no skill, skill issue,
        learn to play, l2p, get good, git gud, trash player, worst player, carried, hands diff,
        gap, diff, sweaty, tryhard, npc, free elo, free win, 0 iq, room temperature iq, low iq,
        smooth brain, ape, monkey, donkey, muppet, neanderthal, ugly, fat, fatass, cringe""",
        targeted=True,
    ),
    *_entries(
        "insult",
        0.8,
        """you are trash, ur trash, you're trash, youre trash, you suck,
        u suck, you are bad, you're bad, ur bad, you are so bad, ur so bad, you're so bad,
        worst streamer, worst player ever, you play like a bot, play like a bot,
        my grandma plays better, my dog plays better, my little brother plays better,
        a bot plays better, uninstall noob, delete noob, you are garbage, ur garbage,
        you're garbage, you have no hands, no hands, you have no skill""",
    ),
    *_entries(
        "taunt",
        0.8,
        """get rekt, get wrecked, cry more, cry about it, ez clap, stay mad,
        seethe, cope harder, mald harder, l bozo, ratio bozo, stay losing, imagine losing,
        imagine being this bad, mad cuz bad, mad because bad, keep crying, get clapped,
        sit down kid, go back to tutorial, back to the tutorial, tutorial island, take the l,
        hold this l, hold that l, gg ez, ggez, gg no re, ez game ez life, too easy, ez win,
        easiest win, free win, thanks for the free win, you got owned, get owned, owned kid,
        cry baby, crybaby, tears of a loser, skill issue, git gud, get good, l2p""",
    ),
    *_entries(
        "taunt",
        0.7,
        """ez, rekt, sit down, sit dog, cope, mald, malding, seethe, ratio,
        bozo, cry, crying, tears, salty, owned, destroyed, clapped, one tapped, you lost,
        you're losing, u lost, easy, lol bad, stay bad, so bad lol""",
        targeted=True,
    ),
    *_entries(
        "harassment",
        0.85,
        """nobody likes you, no one likes you, everyone hates you,
        we all hate you, nobody asked, no one asked, who asked, shut up, shut the up, stfu,
        shut your mouth, close your mouth, go away, get out, leave the stream, leave chat,
        nobody cares, no one cares, you are ugly, ur ugly, you're ugly, you are fat, ur fat,
        you're fat, you are annoying, ur annoying, so annoying, you are a joke, ur a joke,
        you're a joke, kick this guy, ban this guy, waste of space, waste of oxygen,
        i know where you live, i will find you, im going to find you, watch your back,
        i will hurt you, i'll kill you, ill kill you, i will kill you, gonna kill you,
        dox, doxx, swat, swatted, your address, your ip, touch grass, get a life,
        no life, no friends, virgin, incel, simp, simps, neckbeard, basement dweller,
        go outside, never stream again, quit streaming, stop streaming, worst stream,
        unfollowed, unfollow, boring stream, this stream sucks, stream sucks""",
        targeted=True,
    ),
    *_entries(
        "harassment",
        0.9,
        """fuck you, fuck u, fuck off, fuck this guy, screw you,
        f you, f off, go to hell, piss off, you bitch, ur a bitch, you're a bitch, suck my,
        eat shit, you piece of shit, piece of shit, pos, kiss my ass, up yours, you prick,
        you dick, you asshole, you cunt, you bastard""",
    ),
    *_entries(
        "profanity",
        0.8,
        """fuck, fucking, fucker, fuckin, motherfucker, fck, fk, fuk,
        shit, shitty, bullshit, bitch, bitches, son of a bitch, asshole, ass, dick, dickhead,
        cunt, bastard, prick, twat, wanker, pissed, cock, cocksucker, douche, douchebag,
        jackass, dipshit, stfu, gtfo, *fuck*, *shit*, *bitch*, *cunt*""",
        targeted=True,
    ),
    *_entries("profanity", 0.4, "damn, goddamn, crap, wtf, fml, bs, hell, sucks, omfg"),
)
