"""consentd: call-recording consent for Asterisk."""
