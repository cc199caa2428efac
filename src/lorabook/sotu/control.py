"""The contamination check's control passages (`lorabook.memorization`)."""

# Openings and next sentences written for this report, in the manner of an
# address to Congress; no model saw them before 2026.
CONTROL = [
    ("The harvest of this year has been smaller than the last, yet no part "
     "of the country has wanted bread.",
     "The farmers of the western States have borne the heaviest share of "
     "the loss, and I ask you to consider whether the duties on their "
     "implements should be lowered."),
    ("Our commerce with the ports of South America has doubled in five "
     "years.",
     "Much of it still travels under foreign flags, because our own yards "
     "build too few ships of the size that trade requires."),
    ("The post office now reaches every county seat in the Union.",
     "Its revenues have not kept pace with its routes, and the deficit of "
     "the past year was met from the general treasury."),
    ("I have received from the Governor of the Territory a report of the "
     "disorders along its southern border.",
     "The troops sent there last spring have restored quiet, but they "
     "cannot remain without an appropriation for their supply."),
    ("The public debt has been reduced by nearly a fifth since I last "
     "addressed you.",
     "At this rate it will be extinguished within twelve years, provided "
     "that no new loans are authorized for works of doubtful value."),
    ("The census just completed shows a population larger than any former "
     "estimate.",
     "The growth has been greatest in the cities, where the schools and "
     "the water supply have not kept up with the number of families."),
    ("Negotiations with the Government of Spain concerning the boundary "
     "have been resumed.",
     "Its minister has assured me that the claims of our citizens will be "
     "heard by a joint commission before the end of the coming year."),
    ("The lighthouses on the Gulf coast were badly damaged by the storms "
     "of September.",
     "Three of them have been rebuilt, and the rest will be lit again "
     "before the winter trade begins if the Congress provides the funds."),
    ("Every department of the Government has been asked to reduce its "
     "expenses for the coming year.",
     "Most have done so willingly, and the estimates now before you are "
     "lower than any submitted in a decade."),
    ("The railroads have carried more freight this year than in any year "
     "of their history.",
     "Complaints of unjust rates have grown with the traffic, and the "
     "commission you created has found many of them well founded."),
    ("Our relations with the nations of Europe remain peaceful and "
     "friendly.",
     "No question now pending between this Government and any other "
     "threatens that peace, and I see no reason to expect one."),
    ("The Indian tribes of the northern plains have suffered a hard "
     "winter.",
     "The rations promised them by treaty arrived late and short, and I "
     "have ordered an inquiry into the conduct of the agents concerned."),
    ("The mints have coined more silver this year than the law requires.",
     "The surplus lies idle in the vaults of the Treasury, and I recommend "
     "that the purchase of bullion be suspended until it is needed."),
    ("Public lands in the amount of four million acres were sold during "
     "the year.",
     "Most of them went to settlers in small tracts, as the law intends, "
     "but some large purchases deserve a closer look."),
    ("The Army is smaller today than at any time since the war.",
     "Its officers are able and its men well drilled, but the posts of the "
     "frontier are too far apart to be defended by so few."),
    ("The Navy has launched two new cruisers since the last session.",
     "Both were built in American yards from American steel, a thing that "
     "could not have been done ten years ago."),
    ("The courts of the United States are burdened with more cases than "
     "they can hear.",
     "In some districts a suit waits three years for trial, and I ask that "
     "new judges be appointed where the need is greatest."),
    ("Our schools for the deaf and the blind have been enlarged.",
     "They now admit every child who applies, and their graduates find "
     "work in trades that were closed to them a generation ago."),
    ("The tariff of the last session has raised more revenue than was "
     "expected.",
     "I do not think the surplus should be spent merely because it is "
     "there; it should return to the people who paid it."),
    ("The epidemic that visited the southern ports this summer has passed.",
     "It took many lives in three cities, and it showed how little our "
     "quarantine laws can do when each State keeps its own."),
]
