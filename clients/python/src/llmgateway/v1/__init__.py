"""Generated from protos/; do not edit. Run `make protos`."""
