"""`customer-groups chaos`: several instances under a steady load and injected faults, and a
checker that reads back everything they wrote."""
