"""``python -m kdzoo.authoring.apidoc > docs/api.md`` regenerates the plugin API reference."""

from kdzoo.authoring.apidoc import render

if __name__ == "__main__":
    print(render(), end="")
