"""``make bench``: consentd against a pure-dialplan baseline and a floor, side by side."""
