#!/usr/bin/python
"""Test module: gives the host the facts it is passed, as ``setup`` would report them.

The platforms that cannot be booted here (EL 8/9, Ubuntu, EL7, non-systemd hosts)
are tested with their facts: the role's own platform_needs.yml runs on them.
"""

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(argument_spec={"facts": {"type": "dict", "required": True}})
    module.exit_json(changed=False, ansible_facts=module.params["facts"])


if __name__ == "__main__":
    main()
