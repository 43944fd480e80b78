"""The quality monitor (shadow judging, feedback, the quality report) and the labels it gives the router."""
