"""The ground floor shared by every wing: settings, models, symbols, client factories, schema."""
