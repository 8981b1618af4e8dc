"""One inference protocol (protocol.py), one chat renderer (chat.py), several engines."""
