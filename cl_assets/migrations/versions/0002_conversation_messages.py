"""conversation messages: a tree of sanitized messages, and each interaction's context

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 13:40:00

Existing interactions keep every column and get `context_id` NULL: they read as single-turn
conversations. `ALTER TABLE ADD COLUMN` only, so SQLite does not copy the table.
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('messages',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('parent_id', sa.String(length=32), nullable=True),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('content', sa.Text(), nullable=False),
    sa.Column('pii_types', sa.JSON(), nullable=False),
    sa.Column('user_hash', sa.String(length=64), nullable=True),
    sa.Column('weight', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['parent_id'], ['messages.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.create_index('ix_messages_parent_id', ['parent_id'], unique=False)
        batch_op.create_index('ix_messages_user_hash', ['user_hash'], unique=False)
    # Plain ADD COLUMN (not batch mode): SQLite would otherwise rebuild the whole table.
    op.add_column('interactions', sa.Column('context_id', sa.String(length=32), nullable=True))
    op.create_index('ix_interactions_context_id', 'interactions', ['context_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_interactions_context_id', table_name='interactions')
    with op.batch_alter_table('interactions', schema=None) as batch_op:
        batch_op.drop_column('context_id')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_user_hash')
        batch_op.drop_index('ix_messages_parent_id')
    op.drop_table('messages')
