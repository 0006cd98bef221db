"""Sample-stability analysis: the measures and the LFSS paper's analyses (pure functions), the
callback that records stability during training, the report, and the label-change monitor."""
