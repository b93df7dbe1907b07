"""``fedprompt completion bash``: a bash completion script written from the parser itself, so that it offers
exactly the commands, options and choices the installed ``fedprompt`` takes."""

from __future__ import annotations

import argparse
import shlex
from typing import TYPE_CHECKING

from fedprompt.app.cli.common import add_command, commands

if TYPE_CHECKING:
    from fedprompt.app.cli.common import Subparsers

#: The script around the tables: the words typed so far walk down the command tree; after an option with
#: choices its choices are offered, after another option that takes a value nothing (bash then completes file
#: names: ``complete -o default``), else the command's subcommands, options and positional choices.
SCRIPT = """# bash completion for fedprompt, written by `fedprompt completion bash` (bash 4 or later)
_fedprompt() {{
    local -A children=( {children} )
    local -A offered=( {offered} )
    local -A choices=( {choices} )
    local -A takes_value=( {takes_value} )
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}} path=fedprompt word i
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        if [[ " ${{children[$path]}} " == *" $word "* ]]; then
            path="$path $word"
        fi
    done
    if [[ -n ${{choices["$path|$prev"]}} ]]; then
        COMPREPLY=($(compgen -W "${{choices["$path|$prev"]}}" -- "$cur"))
    elif [[ -z ${{takes_value["$path|$prev"]}} ]]; then
        COMPREPLY=($(compgen -W "${{offered[$path]}}" -- "$cur"))
    fi
}}
complete -o default -F _fedprompt fedprompt
"""


def bash_script(root: argparse.ArgumentParser) -> str:
    """The completion script for ``root`` and every command below it."""
    children: dict[str, list[str]] = {}
    offered: dict[str, list[str]] = {}
    choices: dict[str, list[str]] = {}
    takes_value: dict[str, list[str]] = {}
    for command in commands(root):
        path = command.prog
        children[path], offered[path] = [], []
        for action in command._actions:
            names = [str(c) for c in action.choices or ()]
            if isinstance(action, argparse._SubParsersAction):
                children[path] += names
                offered[path] += names
            elif not action.option_strings:
                offered[path] += names  # a positional's choices (bench NAME)
            else:
                offered[path] += action.option_strings
                for option in action.option_strings:
                    if names:
                        choices[f"{path}|{option}"] = names
                    elif action.nargs != 0:
                        takes_value[f"{path}|{option}"] = ["yes"]

    def table(entries: dict[str, list[str]]) -> str:
        return " ".join(f"[{shlex.quote(key)}]={shlex.quote(' '.join(words))}" for key, words in entries.items())

    return SCRIPT.format(children=table(children), offered=table(offered), choices=table(choices),
                         takes_value=table(takes_value))


def cmd_completion(args: argparse.Namespace) -> int:
    from fedprompt.app.cli import build_parser

    print(bash_script(build_parser()), end="")
    return 0


def register(sub: Subparsers) -> None:
    """``completion SHELL``."""
    completion = add_command(sub, "completion", "print a shell completion script for fedprompt",
                             "fedprompt completion bash",
                             description="Print a completion script for the shell (bash 4 or later): load it with "
                                         "`source <(fedprompt completion bash)`, or save it where bash-completion "
                                         "looks (`fedprompt completion bash > "
                                         "~/.local/share/bash-completion/completions/fedprompt`).")
    completion.add_argument("shell", choices=["bash"], help="the shell to complete in")
    completion.set_defaults(fn=cmd_completion)
