"""idlora_core."""
