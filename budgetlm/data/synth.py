"""Built-in, seeded generator of simple children's stories in the style of TinyStories.

Why it exists: training must still work when the Hugging Face hub cannot be reached
(offline machines, CI, air-gapped clusters).  This module is the offline default
corpus: pure stdlib, deterministic for a seed on every platform, fast (over ten
thousand stories per second on one core) and varied enough that a small model trained on it
learns real structure -- characters that stay the same, dialogue, a problem and its
resolution, and a closing moral.

Templates use two tiny notations: ``{key}`` is filled from the story's context (the
same value every time inside one story, which keeps names and pronouns consistent)
and ``[a|b|c]`` picks one alternative afresh at each use (``[a|]`` makes "a"
optional).  A beat is a tuple of alternative templates; a beat whose first element
is ``"?"`` is used only half the time.  Only ``random.Random(seed)`` is used.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from types import MappingProxyType
from typing import Iterator, Mapping, Sequence, TypeVar

__all__ = ["generate_stories", "iter_stories", "HEROES", "FRIENDS", "PLACES", "OBJECTS", "PROBLEMS"]

T = TypeVar("T")
MIN_WORDS, MAX_WORDS = 80, 300

HEROES: tuple[tuple[str, str], ...] = tuple((n, "she") for n in (
    "Lily", "Mia", "Emma", "Sara", "Lucy", "Anna", "Zoe", "Ella", "Rosie", "Amy", "Daisy", "Ruby",
    "Molly", "Sophie", "Chloe", "Grace", "Kate", "Maya", "Nora", "Ivy", "Hannah", "Jenny", "Poppy",
    "Clara")) + tuple((n, "he") for n in (
    "Tom", "Sam", "Jack", "Leo", "Tim", "Finn", "Jake", "Noah", "Ollie", "Luke", "Ben", "Adam",
    "Theo", "Eli", "Owen", "Ryan", "Henry", "Toby", "Danny", "Peter", "Joe", "Milo", "Oscar", "Jamie"))
# Friends, siblings and other children: never a name from HEROES, so the protagonist is unique.
FRIENDS: tuple[tuple[str, str], ...] = tuple((n, "she") for n in (
    "Bella", "Lola", "Rita", "Tina", "Jill", "Pia", "Nina", "Wendy", "Hazel", "Kira")) + tuple(
    (n, "he") for n in ("Gus", "Ned", "Ravi", "Omar", "Carl", "Bob", "Kai", "Liam", "Zack", "Hugo"))
FAMILY: tuple[tuple[str, str, str], ...] = (  # (how the hero says it, name in the story, pronoun)
    ("mom", "Mom", "she"), ("dad", "Dad", "he"), ("grandma", "Grandma", "she"),
    ("grandpa", "Grandpa", "he"), ("Aunt May", "Aunt May", "she"), ("Uncle Ted", "Uncle Ted", "he"))
PETS: tuple[tuple[str, str, str], ...] = (  # (kind, name, happy sound)
    ("dog", "Buddy", "barked"), ("puppy", "Spot", "yipped"), ("dog", "Rex", "wagged his tail"),
    ("dog", "Biscuit", "barked"), ("puppy", "Pepper", "wagged her tail"), ("cat", "Whiskers", "purred"),
    ("kitten", "Mittens", "purred"), ("cat", "Tiger", "meowed"), ("cat", "Socks", "purred"),
    ("bunny", "Fluffy", "hopped around"), ("dog", "Rufus", "barked"), ("kitten", "Ginger", "meowed"))
# (place, things to do there, spots where something can hide, things to see)
PLACES: tuple[tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    ("park", ("play on the swings", "feed the ducks", "go down the slide"),
     ("under a bench", "behind a big tree", "by the swings"), ("ducks on the pond", "kids on the slide")),
    ("forest", ("look for pinecones", "walk on the little path", "listen to the birds"),
     ("under a log", "behind a bush", "in a pile of leaves"), ("tall trees", "a tiny brown squirrel")),
    ("beach", ("build a sandcastle", "look for shells", "splash in the waves"),
     ("under a towel", "behind a big rock", "in the soft sand"), ("big blue waves", "white birds in the sky")),
    ("garden", ("water the flowers", "pick some berries", "dig in the dirt"),
     ("under a big leaf", "behind the roses", "next to the carrots"), ("red roses", "busy little bees")),
    ("school", ("paint a picture", "sing songs", "play tag"),
     ("under a desk", "behind the bookshelf", "in the toy box"), ("bright pictures on the walls", "lots of books")),
    ("farm", ("feed the chickens", "pet the cows", "ride in the hay wagon"),
     ("in the hay", "behind the barn", "by the chicken coop"), ("a big red barn", "pigs rolling in the mud")),
    ("lake", ("throw stones in the water", "watch the fish", "sail a paper boat"),
     ("under the dock", "in the tall reeds", "behind a tree stump"), ("a family of ducks", "a little boat")),
    ("zoo", ("see the lions", "watch the monkeys", "feed the goats"),
     ("under a bench", "near the monkey house", "by the gate"), ("a tall giraffe", "a sleepy bear")),
    ("library", ("read picture books", "listen to a story", "find a book about dinosaurs"),
     ("under a big chair", "behind a shelf", "on the story rug"), ("rows and rows of books", "soft pillows")),
    ("market", ("buy apples", "smell the fresh bread", "look at the flowers"),
     ("under a table", "behind a basket of pears", "near the bread stand"), ("piles of fruit", "happy people")),
    ("hill", ("roll down the grass", "look at the clouds", "have a picnic"),
     ("in the long grass", "behind a rock", "near an old fence"), ("the whole town below", "fluffy white clouds")),
    ("river", ("skip stones", "look for frogs", "watch the water go by"),
     ("by the bridge", "under a bush", "between two rocks"), ("a little wooden bridge", "shiny fish")),
    ("backyard", ("jump on the grass", "blow bubbles", "play hide and seek"),
     ("under the porch", "behind the shed", "in the sandbox"), ("a big oak tree", "a bird feeder")),
    ("meadow", ("pick flowers", "chase butterflies", "make a flower crown"),
     ("in the tall grass", "behind a hay bale", "under a bush"), ("yellow flowers", "orange butterflies")),
    ("pond", ("look for tadpoles", "watch the frogs jump", "feed the geese"),
     ("by the reeds", "under a lily pad", "behind a mossy rock"), ("green frogs", "white geese")),
    ("toy store", ("look at the toys", "try the little drums", "play with the trains"),
     ("under a shelf", "behind a big box", "in a basket"), ("shelves full of toys", "a huge teddy bear")),
    ("campsite", ("roast marshmallows", "build a small tent", "look at the stars"),
     ("inside the tent", "behind a log", "next to the fire pit"), ("a cozy tent", "tall pine trees")),
    ("playground", ("climb the monkey bars", "play in the sandbox", "spin on the merry-go-round"),
     ("under the slide", "in the sandbox", "behind the climbing wall"), ("a long green slide", "kids laughing")),
)
OBJECTS: tuple[str, ...] = (
    "ball", "kite", "box", "teddy bear", "toy car", "doll", "toy boat", "hat", "book", "drum",
    "jump rope", "wagon", "yo-yo", "robot", "toy train", "spinning top", "puzzle", "scarf", "balloon",
    "bucket", "music box", "blanket", "necklace", "toy plane", "crown", "puppet", "whistle",
    "lunch box", "backpack", "basket", "umbrella", "toy truck", "magic wand", "flute", "bracelet")
SOFT: tuple[str, ...] = ("ball", "teddy bear", "hat", "scarf", "balloon", "blanket", "book", "puppet")
OBJ_ADJS: tuple[str, ...] = (
    "red", "blue", "green", "yellow", "pink", "purple", "orange", "shiny", "little", "big", "new",
    "old", "striped", "spotted", "golden", "silver", "bright")
KID_ADJS: tuple[str, ...] = (
    "lively", "kind", "happy", "curious", "brave", "shy", "funny", "sweet", "clever", "cheerful",
    "gentle", "busy", "playful", "friendly", "silly", "smart")
HOBBIES: tuple[str, ...] = (
    "to play outside", "to sing songs", "to draw pictures", "to dance", "to read books",
    "to look at bugs", "to build things", "to run fast", "to help others", "to eat apples",
    "to watch the clouds", "to tell jokes", "to splash in puddles", "to make new friends")
WEATHER: tuple[str, ...] = ("sunny", "bright", "warm", "windy", "cool", "quiet", "lovely", "crisp", "sleepy")
TIMES: tuple[str, ...] = ("morning", "day", "afternoon", "spring day", "summer day", "autumn morning")
SCARY: tuple[str, ...] = (
    "big hairy spider", "loud barking dog", "dark shadow", "buzzing bee", "big green frog",
    "tall ladder", "noisy goose", "deep puddle", "steep hill", "creepy old tree", "grumpy goat", "owl")
TREATS: tuple[str, ...] = (
    "lollipop", "cupcake", "ice cream cone", "cookie", "slice of cake", "cup of lemonade",
    "piece of candy", "apple", "honey bun", "muffin", "banana", "bowl of cherries")
ANIMALS: tuple[str, ...] = (
    "bird", "kitten", "duck", "frog", "squirrel", "bunny", "hedgehog", "puppy", "turtle", "mouse",
    "owl", "lamb")
SKILLS: tuple[str, ...] = (
    "ride a bike", "swim", "climb the big tree", "jump rope", "whistle", "tie a bow", "fly a kite",
    "build a tall tower", "skip a stone", "do a cartwheel", "catch a ball", "hop on one foot")
SPILLS: tuple[str, ...] = (
    "bucket of water", "jar of paint", "bowl of berries", "basket of apples", "cup of juice",
    "box of crayons", "bag of flour")

Beat = tuple[str, ...]
# kind -> (slot values for {x}, problem beats, resolution beats, morals)
PROBLEMS: Mapping[str, tuple[tuple[str, ...], tuple[Beat, ...], tuple[Beat, ...], tuple[str, ...]]] = MappingProxyType({
    "lost": (("",), (
        ("[After a while|Later|Soon], {name} [looked around for|reached for|wanted] {his} {obj}. [But it was gone!|It was not there!]",
         "[Then|Soon], {name} [noticed|saw] something bad. {His} {obj} was gone!"),
        ('"[Oh no|Oh dear|Uh oh]! [Where is my {obj}?|I lost my {obj}!]" {name} [cried|said|shouted].',
         '{name} [felt|was] [very |so |]sad. "I cannot find my {obj}," {he} [said|cried|told {f}].'),
        ("?", "{He} looked [everywhere|here and there|high and low], but {he} [could not find it|did not see it]."),
    ), (
        ('"[Don\'t worry|It\'s okay], {name}. [Let\'s look together|I will help you look|We will find it]," said {f}.',
         '{f} [held {his} hand|smiled]. "[We will find it|Let\'s look together]," {fhe} said.'),
        ("They looked {spot}. [Then they|They] looked {spot2}. [At last|Then|Finally], {f} [saw|spotted] it!",
         "They [searched|looked] {spot} and {spot2}. [At last|Finally], there it was!"),
        ('{name} [hugged|held] {his} {obj} [tight|close]. "[Thank you|Thanks], {f}!" {he} said [with a big smile|happily|].',),
    ), ("{name} learned to take good care of {his} things.", "{name} learned that it is good to ask for help.")),
    "scared": (SCARY, (
        ("[Then|Suddenly|Soon], {name} saw {ax}. [{He} felt scared.|{His} tummy felt funny.|{He} did not want to go near it.]",),
        ('"I am scared of the {x}," {he} [whispered|said quietly|told {f}].', '"[Look|Help]! [A|There is a] {x}!" {name} [cried|said].'),
        ("?", "{He} [held {f}\'s hand|hid behind {f}|stood very still]."),
    ), (
        ('{f} [smiled|knelt down|gave {him} a hug]. "[It\'s okay to be scared|You are braver than you think|I am right here], {name}," {fhe} said.',),
        ("{name} [took a deep breath|counted to three|held {f}\'s hand]. [Step by step|Slowly|Very slowly], {he} [went closer|tried again].",),
        ("[It was not so scary after all!|Soon {he} was laughing.|{He} felt proud and brave.]",),
        ('"[I did it!|I am not scared anymore!|That was not so bad!]" {name} [said|shouted|cheered].',),
    ), ("{name} learned that being brave means trying even when you are scared.", "From that day on, {name} was not scared of the {x} anymore.")),
    "wants": (TREATS, (
        ("{name} [saw|smelled|thought about] {ax}. {He} wanted it [so much|very much|more than anything].",),
        ('"[Can I have|May I please have] {ax}?" {he} asked {f}.', '"I want {ax}!" {name} said [loudly|again and again].'),
        ('"[Not right now|We have to wait|First we must finish our work]," said {f}.',),
        ("?", "{name} [frowned|stomped {his} feet|felt grumpy]. [Waiting was hard.|{He} did not like to wait.]"),
    ), (
        ("{name} [waited and waited|tried to be patient|sat quietly for a while].",
         "{name} helped {f} [sweep the floor|carry the bags|pick up the toys|wash the cups]."),
        ("[At last|Later|After a while], {f} [smiled and gave {him}|came back with|surprised {him} with] {ax}.",),
        ('"[Thank you|Yum]! [This is the best|It is so good]!" said {name}.',),
        ("?", "{He} [shared it with {f}|gave half to {f}], and they both [smiled|laughed]."),
    ), ("{name} learned that good things come to those who wait.", "Being patient is not easy, but it is worth it.")),
    "broken": (("",), (
        ("[Oh no! |Then |]{name} [dropped|tripped and dropped|bumped] {his} {obj}, and it [broke|cracked|fell apart].",),
        ('"My {obj} is broken!" {he} [cried|said]. [Big tears rolled down {his} cheeks.|{He} felt very sad.|]',
         '"[Oh no|No, no, no]! My {obj}!" [cried|said] {name}. "Now I cannot play with it."'),
    ), (
        ('{f} [looked at|picked up] the {noun}. "[I think we can fix it|Don\'t cry, we can fix it|Let\'s fix it together]," {fhe} said.',),
        ("They [got|found] some [glue|tape|string] and [worked|fixed it] [slowly|carefully|together].",),
        ("[Soon|After a while], the {noun} was [as good as new|fixed|all better].",),
        ('"[Yay|Hooray|Wow]! [Thank you|You are the best], {f}!" said {name}.',),
    ), ("{name} learned that broken things can often be fixed with a little help.", "After that, {name} was more careful with {his} toys.")),
    "storm": (("",), (
        ("[Suddenly|Then|All at once], [dark clouds|big gray clouds] [filled|covered] the sky.",),
        ("[Boom! |]Thunder [rumbled|crashed], and [big drops of rain|cold rain] began to fall.",),
        ('"[Quick|Hurry|Run], let\'s [go home|find somewhere dry]!" [shouted|called] {f}.',),
        ("?", "{name} [was scared of the loud thunder|felt cold and wet|held {his} {obj} tight]."),
    ), (
        ("They [ran|hurried] [into a little shed|back home|under a big roof|into a cozy hut] to stay dry.",),
        ("?", "{f} [told {him} a funny story|sang a song|held {him} close] [until the storm passed|while they waited]."),
        ("[Soon|After a while|Then], the rain stopped and the sun came out.",),
        ('"Look, a rainbow!" {name} [said|shouted|cried]. [It had red, yellow, green and blue.|It was so pretty.|]',),
    ), ("{name} learned that storms do not last forever.", "After every storm, the sun comes out again.")),
    "sharing": (("",), (
        ("[Then|Soon|Just then], a {okind} named {o} came over. {o} [saw|pointed at] {name}\'s {obj}.",),
        ('"[Can I play with your {obj}?|I want your {obj}!|Give me your {obj}!]" {o} [asked|said|shouted].',),
        ('"No! It is mine!" said {name}. {He} [held {his} {obj} tight|turned away|frowned].',),
        ("?", "{o} [started to cry|looked sad|stomped {ohis} feet]."),
    ), (
        ('{f} [came over|saw what happened]. "[Sharing is caring|It is more fun to play together|Why not take turns]," {fhe} said [softly|kindly|].',),
        ("{name} thought about it. [Then {he} gave the {noun} to {o}.|Then {he} smiled and said, \"Let\'s take turns.\"]",),
        ("[{name} and {o}|The two children] played with the {noun} together [all afternoon|until the sun went down|for a long time].",),
        ("?", '"[This is fun|You are my new friend]!" said {o}.'),
    ), ("{name} learned that sharing makes everyone happy.", "Playing together is better than playing alone.")),
    "animal": (ANIMALS, (
        ("[Suddenly|Then], {name} heard a [small|tiny|sad] [sound|cry|noise]. {He} [looked|walked over] and found a [little|baby|tiny] {x}.",),
        ("The {x} was [all alone|lost|cold and scared]. It could not find its [mother|family|home].",),
        ('"[Poor little thing|Oh, look|Oh no]! [It needs help|It is all alone]," {name} [said|whispered].',),
    ), (
        ('"[Let\'s help it|We have to help it|We can help]," said {f}.',),
        ("{name} [gently|carefully|softly] picked up the {x}. They looked {spot} and {spot2}.",),
        ("[There|At last|Soon], they found its [mother|family|home]. The {x} [made a happy little sound|looked so happy].",),
        ('"[Bye|Be safe|Good luck], little {x}!" said {name}.',),
    ), ("{name} felt [warm inside|proud|happy] because {he} helped someone in need.", "It is good to be kind to animals.")),
    "lostway": (("",), (
        ("{name} [chased a butterfly|followed a pretty bird|ran after a rolling ball] [far away|for a long time|past the trees].",),
        ("When {he} looked up, {he} [could not see {f}|did not know where {he} was].",),
        ('"[{f}! Where are you?|Hello? {f}?|Help! I am lost!]" {name} [called|cried].',),
        ("?", "{He} felt [scared|very small|alone] [and began to cry|]."),
    ), (
        ("{He} remembered to stay in one place and call for help.", "{name} stood still and called again, as loud as {he} could."),
        ('"{name}! [I am here|There you are]!" [called|shouted] {f}.',),
        ("{f} [ran over|came running] and gave {him} a big hug.",),
        ('"I am sorry I walked away," said {name}.',),
    ), ("From then on, {name} always stayed close to {f}.", "{name} learned that it is important not to wander off.")),
    "cannot": (SKILLS, (
        ("{name} wanted to {x}, but it was [hard|too hard|not easy].",),
        ("{He} tried [once|and tried], but {he} [fell down|could not do it|failed again].",),
        ('"[I can\'t do it!|I will never learn!|This is too hard!]" {name} said [sadly|with a frown|].',),
    ), (
        ('"[Don\'t give up|Keep trying|Try one more time], {name}," said {f}. "[I will help you.|Let me show you.|You can do it.]"',),
        ("{f} [showed {him} how|helped {him}], and {name} [tried again|practiced every day|kept trying].",),
        ("[At last|Then one day|Finally], {he} could {x}!",),
        ('"[I did it|Look at me|Yay]!" {he} [shouted|cried|cheered].',),
    ), ("{name} learned that if you keep trying, you can do hard things.", "Practice makes hard things easy.")),
    "newfriend": (("",), (
        ("[Then|Soon], {name} saw a {okind} sitting [all alone|by {ohim}self]. The {okind} looked [sad|lonely|shy].",),
        ('"Who is that?" {name} asked {f}. "[That is {o}. {Ohe} is new here|I do not know. Maybe you can say hello]," said {f}.',),
    ), (
        ('{name} [walked over|went up to the {okind}] and said, "Hi! I am {name}. [Do you want to play?|Do you want to play with my {obj}?]"',),
        ('The {okind} [smiled|looked up and smiled|nodded]. "[Yes, please!|I would like that.|Okay!] My name is {o}."',),
        ("[Soon|Before long], {name} and {o} were [laughing and playing|playing together|best friends]. They went to {act} together.",),
    ), ("{name} learned that a kind word can make a new friend.", "It feels good to help someone feel welcome.")),
    "mess": (SPILLS, (
        ("{name} was [not careful|in a hurry|running around], and {he} knocked over a {x}.",),
        ("[What a mess!|There was a big mess everywhere.|It went all over the ground.]",),
        ('"[Oh no|Uh oh|Oops]! [I made a big mess|Look what I did]!" said {name}.',),
        ("?", "{He} wanted to [run away|hide]. [But {he} did not.|But that would not be right.]"),
    ), (
        ('{name} went to {f} and said, "I am sorry. I made a mess."',),
        ('"[Thank you for telling me|It\'s okay, accidents happen|I am glad you told me the truth]," said {f}. "Let\'s clean it up together."',),
        ("They [cleaned with a mop and a cloth|wiped and scrubbed|picked everything up] [until it was all clean|together].",),
        ("?", "Soon everything was [clean|tidy] again."),
    ), ("{name} learned that it is always best to tell the truth.", "Saying sorry and helping makes things better.")),
    "hurt": (("knee", "elbow", "hand", "leg"), (
        ("{name} was running [so fast|very fast] when {he} [tripped over a rock|slipped|fell down].",),
        ("{He} [hurt|scraped] {his} {x}, and it [hurt a lot|stung].", "{His} {x} was red and sore."),
        ('"[Ouch|Ow]! [It hurts|My {x} hurts]!" {he} cried.',),
    ), (
        ("{f} [ran over|came quickly] and [gave {him} a hug|looked at {his} {x}].",),
        ("{Fhe} [put a bandage on it|cleaned it and put a bandage on it|gave it a gentle kiss].",),
        ('"[There you go|All better]! [You are so brave|Be careful next time]," said {f}.',),
        ("Soon {name} felt better and [went back to play|smiled again].",),
    ), ("{name} learned to be careful when {he} runs.", "A hug and a bandage can fix almost anything.")),
    "wind": (("high in a tree", "on top of a tall bush", "up on a big rock", "on a high roof"), (
        ("[Suddenly, a|Whoosh! A|Then a] big gust of wind [came|blew] and [took|carried] {his} {obj} [up into the air|away].",),
        ("It landed {x}.",),
        ('"[My {obj}!|Come back!|Oh no, my {obj}!]" [cried|shouted] {name}.',),
    ), (
        ("{f} had an idea. {Fhe} [got a long stick|found a small ladder|stood on {fhis} tiptoes].",),
        ("{Fhe} [reached|stretched] [up high|as far as {fhe} could] and [got|grabbed] the {noun}.",),
        ('"Here you go, {name}," said {f}. "[Thank you!|You are the best!]" said {name}.',),
    ), ("{name} learned that family and friends are always there to help.", "After that, {name} held {his} {noun} tight on windy days.")),
})

OPENERS: tuple[str, ...] = (
    "Once upon a time, there was a [very |]{adj} {kind} named {name}.",
    "Once upon a time, in a [small|quiet|pretty|little] [town|village], there lived a {adj} {kind} named {name}.",
    "There was a little {kind} named {name} who [loved|liked] {hobby}.",
    "One {weather} {time}, a {adj} {kind} named {name} [woke up early|looked out the window|felt very happy].",
    "{name} was a {adj} little {kind} who lived in a [small|yellow|blue|cozy] house [near the woods|by the sea|on a hill].",
    "Long ago, there was a {adj} {kind}. {His} name was {name}.",
    "One day, a {adj} {kind} named {name} [was feeling bored|wanted an adventure|had a big idea].",
    "Once there was a {adj} {kind} called {name}.",
)
INTRO: tuple[Beat, ...] = (
    ("?", "[{He} loved|{He} liked|More than anything, {he} loved] {hobby2}.", "{He} was [four|five|six|seven] years old.", "{He} had a big smile."),
    ("[Every day, |]{name} [loved to spend time|liked to play] with {fintro}.",
     "{name} [often played|spent a lot of time] with {fintro}. They did [everything|lots of things] together."),
)
SETUP: tuple[Beat, ...] = (
    ("One {weather} {time}, {name} and {f} went to the {place}.",
     '"Can we go to the {place} today?" {name} asked. "[Yes|Of course|Sure], let\'s go!" said {f}.',
     "[Today|That day], {name} and {f} [walked|went|skipped] to the {place}."),
    ("{name} [brought|took] {his} {obj} [with {him}|along].", "{name} [carried|held] {his} {obj} [in {his} hands|close]."),
    ("?", "At the {place}, [{name} saw|they saw|there were lots of things to see, like] {sight}.", "The sun was [warm|bright|shining], and the sky was [blue|clear]."),
    ("They [liked to|wanted to|decided to|began to] {act}.", "{name} [wanted|loved] to {act}."),
    ("?", '"[This is so much fun|I love the {place}|Yay]!" said {name}.', "{name} felt [happy|so glad|full of joy]."),
)
PET_INTRO: Beat = ("{name} had a [little|fluffy|playful|silly] {petkind} named {pet}.", "{name} also had a {petkind} named {pet}.")
PET_PLAY: Beat = ("{pet} came too and {petsnd}.", "{pet} [ran around|sniffed the grass|jumped up and down] and {petsnd}.")
ENDINGS: tuple[str, ...] = (
    "[That night|That evening|When it was time to go], {name} went home [tired but happy|with a big smile].",
    "It was [the best day ever|a wonderful day|a very good day].",
    "{name} and {f} [laughed|smiled] [all the way home|together].",
    "And they all [lived happily ever after|had a happy day].",
    "[When the sun went down|At the end of the day], {name} and {f} walked home [hand in hand|side by side].",
    "That night, {name} [fell asleep|went to bed] with a [smile|happy heart], dreaming about the {place}.",
)
HUGS: Beat = (
    '{name} gave {f} a [big|warm] hug. "[Thank you for today|This was so much fun|You are the best]," {he} said.',
    "{name} [smiled|grinned] from ear to ear.", "{name} felt [warm and happy|proud|so happy] inside.")
MORALS: tuple[str, ...] = (
    "{name} would always remember this day.", "Being kind makes the world a happier place.",
    "{name} learned that love and help make every day better.",
    "{name} knew that tomorrow would be another fun day.", "Even small problems are easier when we face them together.",
)

_ALT = re.compile(r"\[([^\[\]]*)\]")
_CAP = re.compile(r'(^|[.!?] |, ")([a-z])', re.MULTILINE)


@lru_cache(maxsize=None)
def _parse(template: str) -> tuple[str | tuple[str, ...], ...]:
    """Split a template into literal text and ``[a|b]`` choice groups (cached)."""
    parts: list[str | tuple[str, ...]] = []
    pos = 0
    for m in _ALT.finditer(template):
        parts.append(template[pos:m.start()])
        parts.append(tuple(m.group(1).split("|")))
        pos = m.end()
    parts.append(template[pos:])
    return tuple(p for p in parts if p != "")


def _pick(rng: random.Random, seq: Sequence[T]) -> T:
    """Uniform choice; faster than ``rng.choice`` and equally reproducible."""
    return seq[int(rng.random() * len(seq))]


def _fill(rng: random.Random, template: str, ctx: dict[str, str]) -> str:
    """Expand one template; spacing and capitals are tidied once per story in ``_tidy``."""
    r = rng.random
    return "".join(p if p.__class__ is str else p[int(r() * len(p))] for p in _parse(template)).format_map(ctx)


def _tidy(text: str) -> str:
    text = text.replace("  ", " ").replace(" \n", "\n").replace(" .", ".").replace(" ,", ",").strip()
    return _CAP.sub(lambda m: m.group(1) + m.group(2).upper(), text)


def _beats(rng: random.Random, beats: tuple[Beat, ...], ctx: dict[str, str]) -> list[str]:
    out = []
    for beat in beats:
        if beat[0] == "?":
            if rng.random() < 0.5:
                continue
            beat = beat[1:]
        out.append(_fill(rng, _pick(rng, beat), ctx))
    return out


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _pronouns(prefix: str, he: str) -> dict[str, str]:
    him, his = ("him", "his") if he == "he" else ("her", "her")
    d = {prefix + "he": he, prefix + "him": him, prefix + "his": his}
    return d | {k[0].upper() + k[1:]: v.capitalize() for k, v in d.items()}


def _context(rng: random.Random, kind: str) -> dict[str, str]:
    name, he = _pick(rng, HEROES)
    place, acts, spots, sights = _pick(rng, PLACES)
    obj = _pick(rng, OBJECTS)
    while kind == "broken" and obj in SOFT:
        obj = _pick(rng, OBJECTS)
    noun = obj
    if rng.random() < 0.7:
        obj = f"{_pick(rng, OBJ_ADJS)} {obj}"
    spot, spot2 = _pick(rng, spots), _pick(rng, spots)
    while spot2 == spot:
        spot2 = _pick(rng, spots)
    ctx = {"name": name, "kind": "girl" if he == "she" else "boy", "place": place, "obj": obj, "noun": noun,
           "act": _pick(rng, acts), "spot": spot, "spot2": spot2, "sight": _pick(rng, sights),
           "adj": _pick(rng, KID_ADJS), "hobby": _pick(rng, HOBBIES), "hobby2": _pick(rng, HOBBIES),
           "weather": _pick(rng, WEATHER), "time": _pick(rng, TIMES)} | _pronouns("", he)
    friend, fhe = _pick(rng, FRIENDS)
    r = rng.random()
    if r < 0.45:
        rel, ref, fhe = _pick(rng, FAMILY)
        intro = f"{ctx['his']} {rel}"
    elif r < 0.6:
        ref, intro = friend, f"{ctx['his']} {'big' if rng.random() < 0.5 else 'little'} " \
                             f"{'sister' if fhe == 'she' else 'brother'}, {friend}"
    else:
        ref, intro = friend, _pick(rng, (f"{ctx['his']} best friend, {friend}", f"a friend named {friend}",
                                         f"{ctx['his']} friend {friend} from next door"))
    ctx |= {"f": ref, "fintro": intro} | _pronouns("f", fhe)
    other, ohe = _pick(rng, FRIENDS)
    while other == ref:
        other, ohe = _pick(rng, FRIENDS)
    ctx |= {"o": other, "okind": "girl" if ohe == "she" else "boy"} | _pronouns("o", ohe)
    x = _pick(rng, PROBLEMS[kind][0])
    ctx |= {"x": x, "ax": _a(x) if x else ""}
    pet = _pick(rng, PETS)
    ctx |= {"petkind": pet[0], "pet": pet[1], "petsnd": pet[2]}
    return ctx


def _story(rng: random.Random) -> str:
    kind = _pick(rng, tuple(PROBLEMS))
    _, problem, resolution, morals = PROBLEMS[kind]
    ctx = _context(rng, kind)
    has_pet = rng.random() < 0.3
    intro = [_fill(rng, _pick(rng, OPENERS), ctx)] + _beats(rng, INTRO, ctx)
    setup = _beats(rng, SETUP, ctx)
    if has_pet:
        intro.append(_fill(rng, _pick(rng, PET_INTRO), ctx))
        setup.insert(2, _fill(rng, _pick(rng, PET_PLAY), ctx))
    trouble, fix = _beats(rng, problem, ctx), _beats(rng, resolution, ctx)
    if rng.random() < 0.4:
        fix.append(_fill(rng, _pick(rng, HUGS), ctx))
    ending = [_fill(rng, _pick(rng, ENDINGS), ctx)]
    if has_pet and rng.random() < 0.5:
        ending.append(_fill(rng, "{pet} [was happy too|curled up next to {him}|{petsnd} happily].", ctx))
    if rng.random() < 0.8:  # a closing moral, usually tied to the problem
        ending.append(_fill(rng, _pick(rng, morals + MORALS if rng.random() < 0.3 else morals), ctx))
    paras = [intro, setup, trouble, fix, ending]
    if rng.random() < 0.5:  # sometimes fewer, longer paragraphs
        paras = [intro + setup, paras[2] + paras[3], ending]
    return _tidy("\n\n".join(" ".join(p) for p in paras))


def iter_stories(seed: int = 0) -> Iterator[str]:
    """Yield an endless, reproducible stream of stories (80-300 words each) for ``seed``."""
    rng = random.Random(seed)
    while True:
        story = _story(rng)
        if MIN_WORDS <= len(story.split()) <= MAX_WORDS:
            yield story


def generate_stories(n: int, seed: int = 0) -> list[str]:
    """Return the first ``n`` stories of ``iter_stories(seed)``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    it = iter_stories(seed)
    return [next(it) for _ in range(n)]
