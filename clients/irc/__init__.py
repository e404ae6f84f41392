"""The IRC chat bridge: Twitch-style IRC in, the moderation plugin's verdicts carried out."""
