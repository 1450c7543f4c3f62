"""The Nanonis TCP programming interface: :mod:`.protocol` (bytes), :mod:`.client` (one
connection), :mod:`.control` (typed commands), :mod:`.forward` (lines into the daemon)."""
