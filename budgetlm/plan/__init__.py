"""What a budget buys before spending it: the planner, the memory model, device peaks, and bench (the measured speed)."""
