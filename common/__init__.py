"""The layer pretrain/ and eval/ share (both import it; it imports neither): checkpoint files."""
