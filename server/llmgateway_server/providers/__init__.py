"""Provider adapters: one module per wire format. They know HTTP, nothing about tenants."""
