"""coordinator: MABEAM coordination — auctions, negotiation, votes, markets and variables."""
